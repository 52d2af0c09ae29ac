"""Token estimates and the budget window, on their own."""

from __future__ import annotations

from typing import Any

import fakeredis
import httpx2
import openai
import pytest

from shared import compaction_item, events, keys
from shared.models import TurnRequest
from shared.settings import Settings
from worker.agents import Agent
from worker.compaction import _chunks
from worker.context_window import conversation_estimates, estimate_tokens, fit, history, is_context_overflow
from worker.prompt import exchanges


def user(text: str, item_id: str = "") -> dict[str, Any]:
    return {"id": item_id or f"msg_{text}", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}


def call(call_id: str) -> dict[str, Any]:
    return events.function_call_item(f"fc_{call_id}", call_id, "lookup", "{}", "completed")


def result(call_id: str) -> dict[str, Any]:
    return events.function_call_output_item(f"fco_{call_id}", call_id, "ok", "completed")


def test_text_costs_about_a_token_per_four_characters_plus_the_message() -> None:
    assert estimate_tokens(user("x" * 40)) == 4 + 10
    assert estimate_tokens(events.message_item("m", "y" * 9, "completed")) == 4 + 3


def test_images_cost_by_detail_not_by_the_size_of_their_data() -> None:
    def image(detail: str) -> dict[str, Any]:
        return {"id": "m", "type": "message", "role": "user",
                "content": [{"type": "input_image", "image_url": "data:image/png;base64," + "A" * 100_000,
                             "detail": detail}]}

    assert estimate_tokens(image("low")) == 4 + 85
    assert estimate_tokens(image("high")) == estimate_tokens(image("auto")) == 4 + 765


def test_calls_and_results_in_a_row_form_one_exchange() -> None:
    items = [user("q"), call("a"), call("b"), result("a"), result("b"), user("r"), call("c"), result("c")]

    assert [len(group) for group in exchanges(items)] == [1, 4, 1, 2]


def test_fit_keeps_the_newest_whole_exchanges_within_the_budget() -> None:
    items = [user("old"), call("a"), result("a"), user("new")]
    tokens = [5, 5, 5, 5]

    assert fit(items, tokens, 20) == items
    assert fit(items, tokens, 19) == items[1:]
    # 14 fits "new" and one half of the call/result exchange, but half an exchange is never sent.
    assert fit(items, tokens, 14) == items[3:]
    assert fit(items, tokens, 0) == []


def test_fit_always_keeps_the_call_the_new_input_answers() -> None:
    items = [user("q"), call("a")]

    assert fit(items, [5, 50], 10, keep=frozenset({"a"})) == [call("a")]


@pytest.mark.parametrize(
    ("status", "body", "overflow"),
    [
        (400, {"error": {"message": "too long", "code": "context_length_exceeded"}}, True),
        (400, {"error": {"message": "This model's maximum context length is 8192 tokens."}}, True),
        (400, {"error": {"message": "temperature is out of range"}}, False),
        (500, {"error": {"message": "context window service down"}}, False),
    ],
)
def test_context_overflow_is_recognised_by_code_or_message(status: int, body: Any, overflow: bool) -> None:
    response = httpx2.Response(status, json=body, request=httpx2.Request("POST", "http://upstream/v1/chat"))
    exc = openai.APIStatusError(body["error"]["message"], response=response, body=body["error"])

    assert is_context_overflow(exc) is overflow


async def test_estimates_are_stored_once_and_read_back() -> None:
    redis = fakeredis.FakeAsyncRedis()
    items = [user("hello", "msg_1"), user("x" * 400, "msg_2")]

    first = await conversation_estimates(redis, "conv_1", items, ttl_s=60)
    await redis.hset(keys.conversation_item_tokens("conv_1"), "msg_2", 7)  # what is stored is what counts
    second = await conversation_estimates(redis, "conv_1", items, ttl_s=60)

    assert first == [estimate_tokens(i) for i in items] and second == [first[0], 7]
    assert 0 < await redis.ttl(keys.conversation_item_tokens("conv_1")) <= 60


def test_compaction_chunks_hold_whole_exchanges_within_the_budget() -> None:
    items = [user("a"), call("x"), result("x"), user("b"), user("c")]

    chunks = _chunks(items, [5, 5, 5, 5, 5], 10)

    assert chunks == [[user("a")], [call("x"), result("x")], [user("b"), user("c")]]
    assert _chunks(items, [50, 5, 5, 5, 5], 10)[0] == [user("a")]  # an item over the budget goes alone


def test_a_compaction_item_carries_its_summary_opaquely() -> None:
    item = compaction_item.new("The user said: My name is Ravi.")

    assert "Ravi" not in item["encrypted_content"]
    assert compaction_item.summary_of(item) == "The user said: My name is Ravi."
    assert compaction_item.summary_of({"encrypted_content": "gAAAAB-not-ours"}) is None


@pytest.mark.parametrize("truncation", ["disabled", "auto"])
async def test_a_carried_context_is_the_history_and_redis_is_not_read(truncation: str) -> None:
    # A WebSocket's store:false chain: the API carries the context; the chain's records may be gone already.
    redis = fakeredis.FakeAsyncRedis()
    context = [user("My name is Asha."), user("x" * 40, "msg_2"), user("What is my name?", "msg_3")]
    req = TurnRequest(response_id="resp_1", model="m", input=[user("again")], previous_response_id="resp_0",
                      context=context, store=False, truncation=truncation)  # type: ignore[arg-type]
    settings = Settings(history_max_items=2)
    agent = Agent(name="m", model="m")

    sent = await history(redis, req, agent, settings, openai.AsyncOpenAI(api_key="x", base_url="http://unused"))

    assert sent == (context if truncation == "disabled" else context[-2:])
