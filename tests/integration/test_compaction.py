"""Compaction: history past the agent's threshold is summarised into a `compaction` item that stands in for
it, so a 500-turn conversation keeps a bounded prompt and still remembers a fact from its first turn.

The `compacting` test agent compacts past 600 estimated tokens; the mock model summarises by keeping every
"my name is" the conversation holds, and answers "What is my name?" from a summary like from any message.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import redis
from openai import OpenAI
from openai.types.responses import CompactedResponse

from shared import events, ids, keys
from tests.conftest import Stack
from tests.openresponses_spec import Conformance, assert_spec_valid
from worker.prompt import SUMMARY_PREFIX

FILLER = "a message long enough that five hundred turns of them fill far more than any budget here"


def _user(text: str) -> dict[str, Any]:
    return {"id": ids.message_id(), "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": text}]}


def _seed_turns(rds: redis.Redis, conversation: str, turns: int) -> None:
    """Writes `turns` finished turns straight into the conversation, as committed turns leave them."""
    items = [_user("My name is Ravi."), events.message_item(ids.message_id(), "Nice to meet you, Ravi.", "completed")]
    for i in range(2, turns + 1):
        items += [_user(f"Turn {i}: {FILLER}."), events.message_item(ids.message_id(), f"Noted {i}.", "completed")]
    rds.rpush(keys.conversation_items(conversation), *(json.dumps(i) for i in items))


def _prompt(client: OpenAI, conversation: str) -> list[dict[str, Any]]:
    response = client.responses.create(model="compacting", input="[echo-request]", conversation=conversation)
    messages: list[dict[str, Any]] = json.loads(response.output_text)["messages"]
    return messages


def _estimated(messages: list[dict[str, Any]]) -> int:
    return sum(4 + len(str(m.get("content") or "")) // 4 for m in messages)


def test_a_500_turn_conversation_keeps_a_bounded_prompt_and_its_first_fact(
    client: OpenAI, rds: redis.Redis, stack: Stack
) -> None:
    conversation = client.conversations.create().id
    _seed_turns(rds, conversation, 500)
    answer = client.responses.create(model="compacting", input="What is my name?", conversation=conversation)
    assert answer.output_text == "Your name is Ravi."
    sizes = []
    for i in range(12):  # more turns: compaction runs again and again, the fact survives each summary
        client.responses.create(model="compacting", input=f"Turn {501 + i}: {FILLER}.", conversation=conversation)
        sizes.append(_estimated(_prompt(client, conversation)))
    assert max(sizes) <= 1500, sizes
    final = client.responses.create(model="compacting", input="What is my name?", conversation=conversation)
    assert final.output_text == "Your name is Ravi."
    # The compactions are conversation items: listed, valid, and the newest is what the model was sent.
    items = httpx.get(f"{stack.base_url}/conversations/{conversation}/items", params={"limit": 100}).json()["data"]
    compactions = [i for i in items if i["type"] == "compaction"]
    assert len(compactions) >= 2
    check = Conformance()
    for item in compactions:
        check.conversation_item(item)
    sent = _prompt(client, conversation)
    summaries = [m["content"] for m in sent if m["role"] == "system" and m["content"].startswith(SUMMARY_PREFIX)]
    assert summaries == [f"{SUMMARY_PREFIX}\nThe user said: My name is Ravi."]


def test_context_management_on_the_request_compacts_for_an_agent_that_does_not(client: OpenAI) -> None:
    conversation = client.conversations.create(
        items=[{"role": "user", "content": "My name is Asha."}] + [{"role": "user", "content": FILLER}] * 10
    ).id
    response = client.responses.create(
        model="plain",
        input="What is my name? [echo-request]",
        conversation=conversation,
        context_management=[{"type": "compaction", "compact_threshold": 100}],
    )
    sent = json.loads(response.output_text)["messages"]
    assert sent[1] == {"role": "system", "content": f"{SUMMARY_PREFIX}\nThe user said: My name is Asha."}
    assert len(sent) < 8  # the summary stands in for the ten long messages
    kinds = [i.type for i in client.conversations.items.list(conversation, order="asc", limit=100).data]
    assert kinds.count("compaction") == 1


def test_a_compaction_item_can_be_sent_back_as_input(client: OpenAI) -> None:
    conversation = client.conversations.create(
        items=[{"role": "user", "content": "My name is Omar."}] + [{"role": "user", "content": FILLER}] * 10
    ).id
    client.responses.create(
        model="plain", input="hi", conversation=conversation,
        context_management=[{"type": "compaction", "compact_threshold": 100}],
    )
    item = next(i for i in client.conversations.items.list(conversation).data if i.type == "compaction")
    # A client carrying its own context sends the summary in place of the history, in a fresh chain.
    answer = client.responses.create(
        model="plain", input=[item.to_dict(), {"role": "user", "content": "What is my name?"}]  # type: ignore[list-item]
    )
    assert answer.output_text == "Your name is Omar."


def test_the_compact_endpoint_summarises_a_chain_into_an_item_the_next_turn_uses(
    client: OpenAI, stack: Stack
) -> None:
    first = client.responses.create(model="plain", input="My name is Lena.")
    second = client.responses.create(model="plain", input="count to 3", previous_response_id=first.id)
    compacted = client.responses.compact(
        model="plain", previous_response_id=second.id, input="Thanks.", instructions="Keep names."
    )
    assert compacted.object == "response.compaction"
    assert [o.type for o in compacted.output] == ["compaction"]
    raw = httpx.get(f"{stack.base_url}/responses/{compacted.id}").json()  # stored like any response
    assert raw["output"] == [o.to_dict() for o in compacted.output]
    reply = httpx.post(
        f"{stack.base_url}/responses/compact", json={"model": "plain", "previous_response_id": second.id}
    ).json()
    assert_spec_valid("CompactResource", reply)
    CompactedResponse.model_validate(reply)
    # The item stands in for the whole chain: a fresh request that sends it knows what the chain knew.
    answer = client.responses.create(
        model="plain",
        input=[*(o.to_dict() for o in compacted.output), {"role": "user", "content": "What is my name?"}],  # type: ignore[misc]
    )
    assert answer.output_text == "Your name is Lena."


def test_compact_needs_something_to_compact(stack: Stack) -> None:
    for body, status, param in (
        ({"model": "plain"}, 400, "input"),
        ({"model": "gpt-nope", "input": "hi"}, 400, "model"),
        ({"model": "plain", "previous_response_id": "resp_missing"}, 400, "previous_response_id"),
        ({"model": "plain", "input": "hi", "stream": True}, 400, "stream"),
    ):
        reply = httpx.post(f"{stack.base_url}/responses/compact", json=body)
        assert reply.status_code == status and reply.json()["error"]["param"] == param, reply.text
