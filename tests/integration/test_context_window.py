"""Conversation growth: `truncation: "auto"` windows history by the agent's token budget without splitting
a call from its result; "disabled" sends everything and fails with context_length_exceeded when the model
cannot take it. `[echo-request]` makes the mock answer with the request it received, so the window is
checked where it matters: in what reached the model.

The test stack's mock takes prompts up to 4000 words; the `windowed` test agent has a 400-token budget.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import redis
from openai import OpenAI

from shared import keys
from tests.conftest import Stack
from tests.integration.conftest import TERMINAL, wait_for
from tests.openresponses_spec import Conformance
from worker.context_window import estimate_tokens

FILLER = "and the rest of this sentence is here only to make the message long enough to matter " * 2


def _echoed(client: OpenAI, conversation: str, model: str = "windowed", **extra: Any) -> list[dict[str, Any]]:
    """The chat messages the model received for a turn on the conversation (that turn's own ask included)."""
    response = client.responses.create(model=model, input="[echo-request]", conversation=conversation, **extra)
    assert response.status == "completed", response.error
    messages: list[dict[str, Any]] = json.loads(response.output_text)["messages"]
    return messages


def _facts(messages: list[dict[str, Any]]) -> list[int]:
    """The facts the user told, among the messages (assistant echoes quote them too, so only user ones)."""
    told = [str(m.get("content")) for m in messages if m["role"] == "user"]
    return sorted({int(n) for text in told for n in re.findall(r"Fact (\d+):", text)})


def test_auto_keeps_the_most_recent_turns_that_fit_the_budget(client: OpenAI) -> None:
    conversation = client.conversations.create().id
    for i in range(6):
        client.responses.create(model="windowed", input=f"Fact {i}: {FILLER}", conversation=conversation)
    sent = _echoed(client, conversation)
    facts = _facts(sent)
    assert facts and facts == list(range(facts[0], 6)), facts  # a recent, unbroken run of turns
    assert facts[0] > 0  # the oldest turns no longer fit
    assert sent[0]["role"] == "system"  # the agent's instructions are never windowed away
    items = [i.to_dict() for i in client.conversations.items.list(conversation, order="asc", limit=100).data]
    # What was sent besides the instructions and the ask; the echo turn's own two items came after it.
    history = items[-(len(sent) - 2) - 2 : -2]
    assert sum(estimate_tokens(i) for i in history) <= 400


def test_auto_never_splits_a_call_from_its_result(client: OpenAI) -> None:
    conversation = client.conversations.create().id
    for city in ("Paris and Tokyo", "Lima", "Oslo and Rome", "Quito"):
        client.responses.create(model="windowed", input=f"What is the weather in {city}?", conversation=conversation)
        sent = _echoed(client, conversation)
        called: set[str] = set()
        for message in sent:
            called |= {c["id"] for c in message.get("tool_calls") or []}
            if message["role"] == "tool":
                assert message["tool_call_id"] in called, "a result was sent without its call"
        answered = {m["tool_call_id"] for m in sent if m["role"] == "tool"}
        assert called == answered, "a call was sent without its result"


def test_each_item_is_estimated_once_and_the_stored_estimate_is_used(
    client: OpenAI, rds: redis.Redis
) -> None:
    conversation = client.conversations.create().id
    for i in range(2):
        client.responses.create(model="windowed", input=f"Fact {i}: short", conversation=conversation)
    assert _facts(_echoed(client, conversation)) == [0, 1]
    stored = rds.hgetall(keys.conversation_item_tokens(conversation))
    items = client.conversations.items.list(conversation, order="asc", limit=100).data
    # Every item a turn has read has its estimate stored (the last turn's own items are read by the next).
    assert {i.id.encode() for i in items[:-2]} <= set(stored)
    # Were estimates recomputed, this would change nothing; stored, it makes Fact 1 too big to send.
    rds.hset(keys.conversation_item_tokens(conversation), items[2].id, 10_000)
    assert _facts(_echoed(client, conversation)) == []


def test_disabled_sends_everything_and_fails_with_the_context_error(stack: Stack, client: OpenAI) -> None:
    long_turn = {"role": "user", "content": "word " * 300}
    conversation = client.conversations.create(items=[long_turn] * 15).id  # 4500 words: over the mock's 4000
    # A plain create gets what OpenAI answers: 400 context_length_exceeded, naming the input.
    plain = httpx.post(
        f"{stack.base_url}/responses", json={"model": "plain", "input": "hello", "conversation": conversation}
    )
    assert plain.status_code == 400
    assert (plain.json()["error"]["code"], plain.json()["error"]["param"]) == ("context_length_exceeded", "input")
    assert "maximum context length is 4000" in plain.json()["error"]["message"]
    # In the background the turn fails, and the failed Response says why.
    created = client.responses.create(model="plain", input="hello", conversation=conversation, background=True)
    final = wait_for(client, created.id, TERMINAL)
    stored = httpx.get(f"{stack.base_url}/responses/{created.id}").json()
    Conformance().response(stored)
    assert (final.status, final.truncation) == ("failed", "disabled")  # the plain agent's default, OpenAI's
    assert final.error is not None and final.error.code == "invalid_prompt"
    assert final.error.message.startswith("context_length_exceeded: ")
    # Windowed to an agent's budget instead, the same conversation gets an answer.
    windowed = client.responses.create(model="windowed", input="hello", conversation=conversation)
    assert windowed.status == "completed" and windowed.truncation == "auto"


def test_disabled_sends_past_the_item_window_and_auto_is_the_agents_default(client: OpenAI) -> None:
    conversation = client.conversations.create(items=[{"role": "user", "content": f"Fact {i}: x"} for i in range(20)])
    every = _echoed(client, conversation.id, model="plain")
    assert _facts(every) == list(range(20))
    # The windowed agent defaults to auto; a request may still say disabled and get every item.
    assert _facts(_echoed(client, conversation.id, truncation="disabled")) == list(range(20))
    auto = client.responses.create(model="windowed", input="hi", conversation=conversation.id)
    assert auto.truncation == "auto"
