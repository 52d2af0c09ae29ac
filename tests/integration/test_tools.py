"""Tools mid-stream through the SDK: server tools, parallel calls, errors, timeouts, limits, client tools."""

from __future__ import annotations

import json
import time
from typing import Any

from openai import OpenAI

from tests.integration.conftest import assert_consecutive, validated

M = "turnstream-mock"


def _items_done(events: list[Any]) -> list[Any]:
    return [e.item for e in events if e.type == "response.output_item.done"]


def test_streamed_turn_with_one_tool_call_shows_call_result_then_answer(client: OpenAI) -> None:
    events = validated(client.responses.create(model=M, input="What is the weather in Bengaluru?", stream=True))
    assert_consecutive([e.sequence_number for e in events])
    kinds = [(e.type, getattr(getattr(e, "item", None), "type", None)) for e in events]
    call_added = kinds.index(("response.output_item.added", "function_call"))
    args_done = kinds.index(("response.function_call_arguments.done", None))
    call_done = kinds.index(("response.output_item.done", "function_call"))
    result_added = kinds.index(("response.output_item.added", "function_call_output"))
    result_done = kinds.index(("response.output_item.done", "function_call_output"))
    first_text = kinds.index(("response.output_text.delta", None))
    assert call_added < args_done < call_done < result_added < result_done < first_text
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"city": "Bengaluru"}
    call, result = _items_done(events)[:2]
    assert call.name == "get_weather" and result.call_id == call.call_id
    assert "24" in result.output
    final = events[-1].response
    assert final.status == "completed"
    assert final.output_text.startswith("The weather in Bengaluru is")
    assert [o.type for o in final.output] == ["function_call", "function_call_output", "message"]


def test_two_parallel_calls_are_each_paired_with_their_result(client: OpenAI) -> None:
    events = validated(
        client.responses.create(model=M, input="What is the weather in Paris and Tokyo?", stream=True)
    )
    final = events[-1].response
    calls = [o for o in final.output if o.type == "function_call"]
    results = [o for o in final.output if o.type == "function_call_output"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Tokyo"]
    assert {r.call_id for r in results} == {c.call_id for c in calls}
    assert "Paris" in final.output_text and "Tokyo" in final.output_text
    indices = [e.output_index for e in events if e.type == "response.output_item.added"]
    assert indices == sorted(set(indices))  # one output index per item, never reused


def test_slow_tool_shows_the_call_a_pause_then_the_result(client: OpenAI) -> None:
    arrived: list[tuple[str, str | None, float]] = []
    for event in client.responses.create(model=M, input='call slow_tool({"seconds": 0.6})', stream=True):
        arrived.append((event.type, getattr(getattr(event, "item", None), "type", None), time.monotonic()))
    at = {(kind, item): t for kind, item, t in arrived}
    pill = at[("response.output_item.added", "function_call_output")]
    result = at[("response.output_item.done", "function_call_output")]
    assert at[("response.output_item.done", "function_call")] <= pill
    assert result - pill >= 0.55
    assert arrived[-1][0] == "response.completed"


def test_tool_error_becomes_history_and_the_turn_continues(client: OpenAI) -> None:
    response = client.responses.create(model=M, input='call broken_tool({"reason": "disk on fire"})')
    assert response.status == "completed"
    result = next(o for o in response.output if o.type == "function_call_output")
    assert "disk on fire" in json.loads(result.output)["error"]  # type: ignore[arg-type]
    assert response.output_text.startswith("The tool broken_tool failed")


def test_invalid_tool_arguments_are_an_error_result_the_model_sees(client: OpenAI) -> None:
    response = client.responses.create(model=M, input='call slow_tool({"seconds": "soon"})')
    result = next(o for o in response.output if o.type == "function_call_output")
    assert "seconds" in json.loads(result.output)["error"]  # type: ignore[arg-type]
    assert response.status == "completed"


def test_tool_timeout_is_an_error_result(client: OpenAI) -> None:
    started = time.monotonic()
    response = client.responses.create(model=M, input="call stuck_tool({})")
    assert time.monotonic() - started < 5
    result = next(o for o in response.output if o.type == "function_call_output")
    assert "timed out after 0.5s" in json.loads(result.output)["error"]  # type: ignore[arg-type]
    assert response.status == "completed"


def test_round_limit_ends_incomplete_with_every_call_answered(client: OpenAI) -> None:
    response = client.responses.create(model=M, input='call echo_tool({"text": "again"}) forever')
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_messages"
    calls = [o for o in response.output if o.type == "function_call"]
    results = [o for o in response.output if o.type == "function_call_output"]
    assert len(calls) == 4  # three rounds run, the fourth request is answered with the limit
    assert [r.call_id for r in results] == [c.call_id for c in calls]
    assert "round limit" in results[-1].output  # type: ignore[operator]


def test_client_side_function_tool_round_trip(client: OpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "name": "lookup_order",
            "description": "Look up an order in the client's own system.",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        }
    ]
    first = client.responses.create(model=M, input='call lookup_order({"id": "A42"})', tools=tools)
    assert first.status == "completed"
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "lookup_order"
    assert json.loads(call.arguments) == {"id": "A42"}
    second = client.responses.create(
        model=M,
        previous_response_id=first.id,
        tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "shipped"}],
    )
    assert second.output_text == "Tool lookup_order returned: shipped."


def test_conversation_history_keeps_call_result_pairs_across_turns(client: OpenAI) -> None:
    conv = client.conversations.create()
    client.responses.create(model=M, input="What is the weather in Tokyo?", conversation=conv.id)
    client.responses.create(model=M, input="My name is Ravi.", conversation=conv.id)
    after = client.responses.create(model=M, input="What is my name?", conversation=conv.id)
    assert after.output_text == "Your name is Ravi."
    items = list(client.conversations.items.list(conv.id, order="asc", limit=100))
    kinds = [i.type for i in items]
    assert kinds[:4] == ["message", "function_call", "function_call_output", "message"]
    assert items[1].call_id == items[2].call_id  # type: ignore[union-attr]
