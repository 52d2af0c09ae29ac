"""api/agui_events.py and api/agui_input.py: Responses events to AG-UI events, AG-UI messages to new items."""

from __future__ import annotations

from typing import Any

import pytest
from ag_ui.core import Event, RunAgentInput
from pydantic import TypeAdapter

from api.agui_events import RunTranslator
from api.agui_input import Held, RunInput, new_items, thread_conversation_id
from api.errors import APIError
from shared import events

AGUI_EVENT: TypeAdapter[Any] = TypeAdapter(Event)
CONV = thread_conversation_id("p", "thread")


def response(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "resp_1", "status": status, "model": "m", "output": [], **extra}


def translated(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    translator = RunTranslator("thread", "run")
    out = []
    for event in stream:
        agui = translator.translate(event)
        if agui is not None:
            dumped = agui.model_dump(by_alias=True, mode="json")
            AGUI_EVENT.validate_python(dumped)
            out.append(dumped)
    return out


def test_a_message_turn_becomes_run_started_text_message_and_run_finished() -> None:
    usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}}
    out = translated([
        events.lifecycle(events.CREATED, response("queued")),
        events.lifecycle(events.IN_PROGRESS, response("in_progress")),
        events.output_item_added(0, events.message_item("msg_a", "", "in_progress")),
        events.content_part_added("msg_a", 0),
        events.text_delta("msg_a", 0, "Hi "),
        events.text_delta("msg_a", 0, ""),
        events.text_delta("msg_a", 0, "there"),
        events.text_done("msg_a", 0, "Hi there"),
        events.content_part_done("msg_a", 0, "Hi there"),
        events.output_item_done(0, events.message_item("msg_a", "Hi there", "completed")),
        events.lifecycle(events.COMPLETED, response("completed", usage=usage)),
    ])
    assert out == [
        {"type": "RUN_STARTED", "threadId": "thread", "runId": "run"},
        {"type": "TEXT_MESSAGE_START", "messageId": "msg_a", "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "msg_a", "delta": "Hi "},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "msg_a", "delta": "there"},
        {"type": "TEXT_MESSAGE_END", "messageId": "msg_a"},
        {"type": "RUN_FINISHED", "threadId": "thread", "runId": "run", "usage": [
            {"model": "m", "inputTokens": 3, "outputTokens": 2, "totalTokens": 5, "reasoningTokens": 0}
        ]},
    ]


def test_a_server_tool_call_streams_start_args_end_and_its_result() -> None:
    call = events.function_call_item("fc_a", "call_1", "get_weather", "", "in_progress")
    out = translated([
        events.output_item_added(0, call),
        events.arguments_delta("fc_a", 0, '{"city": '),
        events.arguments_done("fc_a", 0, "get_weather", '{"city": "Pune"}'),
        events.output_item_done(0, {**call, "arguments": '{"city": "Pune"}', "status": "completed"}),
        events.output_item_added(1, events.function_call_output_item("fco_a", "call_1", "", "in_progress")),
        events.output_item_done(1, events.function_call_output_item("fco_a", "call_1", "Pune: sunny", "completed")),
    ])
    assert out == [
        {"type": "TOOL_CALL_START", "toolCallId": "call_1", "toolCallName": "get_weather"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "call_1", "delta": '{"city": '},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "call_1", "delta": '"Pune"}'},  # the part never streamed
        {"type": "TOOL_CALL_END", "toolCallId": "call_1"},
        {"type": "TOOL_CALL_RESULT", "messageId": "fco_a", "toolCallId": "call_1", "content": "Pune: sunny",
         "role": "tool"},
    ]


def test_reasoning_and_a_refusal_map_to_reasoning_events_and_text() -> None:
    out = translated([
        events.output_item_added(0, events.reasoning_item("rs_a", "", "in_progress")),
        events.content_part_added("rs_a", 0, "reasoning"),
        events.part_delta("reasoning", "rs_a", 0, "hmm"),
        events.part_done("reasoning", "rs_a", 0, "hmm"),
        events.content_part_done("rs_a", 0, "hmm", "reasoning"),
        events.output_item_done(0, events.reasoning_item("rs_a", "hmm", "completed")),
        events.output_item_added(1, events.message_item("msg_b", "", "in_progress", "refusal")),
        events.part_delta("refusal", "msg_b", 1, "No."),
        events.output_item_done(1, events.message_item("msg_b", "No.", "completed", "refusal")),
    ])
    assert [e["type"] for e in out] == [
        "REASONING_START", "REASONING_MESSAGE_START", "REASONING_MESSAGE_CONTENT", "REASONING_MESSAGE_END",
        "REASONING_END", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END",
    ]
    assert out[2]["delta"] == "hmm" and out[6]["delta"] == "No."


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (response("failed", error={"code": "server_error", "message": "upstream 500"}),
         {"type": "RUN_ERROR", "message": "upstream 500", "code": "server_error"}),
        (response("cancelled"), {"type": "RUN_ERROR", "message": "The run was cancelled.", "code": "cancelled"}),
        (response("incomplete", incomplete_details={"reason": "max_output_tokens"}),
         {"type": "RUN_FINISHED", "threadId": "thread", "runId": "run",
          "result": {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}}),
    ],
    ids=["failed", "cancelled", "incomplete"],
)
def test_how_a_turn_ends_decides_run_finished_or_run_error(final: dict[str, Any], expected: dict[str, Any]) -> None:
    kind = events.TERMINAL_TYPE_FOR_STATUS[final["status"]]
    assert translated([events.lifecycle(kind, final)]) == [expected]


def run_input(messages: list[dict[str, Any]], **extra: Any) -> RunInput:
    return RunInput.model_validate({"threadId": "thread", "runId": "r", "messages": messages, **extra})


def test_run_input_takes_both_casings_and_defaults_what_agent_framework_leaves_out() -> None:
    snake = RunInput.model_validate({"thread_id": "t", "run_id": "r", "messages": []})
    assert (snake.thread_id, snake.tools, snake.context, snake.forwarded_props) == ("t", [], [], {})
    with pytest.raises(ValueError):
        RunAgentInput.model_validate({"thread_id": "t", "run_id": "r", "messages": []})  # the protocol's own


def test_only_messages_after_the_last_held_one_are_new() -> None:
    user = {"id": "u1", "role": "user", "content": "call lookup_order({})"}
    first = new_items(run_input([user]), CONV, Held())
    assert [i["type"] for i in first] == ["message"] and first[0]["id"].startswith("msg_")
    held = Held.of([*first, {"id": "fc_x", "type": "function_call", "call_id": "call_1"}])
    # The function-invocation loop re-sends the user message under a new id, with the call and its result.
    again = run_input([
        {**user, "id": "u1-renamed"},
        {"id": "a1", "role": "assistant", "toolCalls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}]},
        {"id": "t1", "role": "tool", "toolCallId": "call_1", "content": "shipped"},
    ])
    items = new_items(again, CONV, held)
    assert [(i["type"], i.get("call_id")) for i in items] == [("function_call_output", "call_1")]


def test_a_whole_history_adds_only_its_new_messages_with_stable_ids() -> None:
    history = [{"id": "u1", "role": "user", "content": "hi"}]
    first = new_items(run_input(history), CONV, Held())
    answer = {"id": "msg_" + "a" * 48, "type": "message", "role": "assistant"}
    held = Held.of([*first, answer])
    later = run_input([*history, {"id": answer["id"], "role": "assistant", "content": "hello"},
                       {"id": "u2", "role": "user", "content": [{"type": "text", "text": "and?"}]}])
    items = new_items(later, CONV, held)
    assert [i["content"] for i in items] == [[{"type": "input_text", "text": "and?"}]]
    assert new_items(run_input(history), CONV, Held())[0]["id"] == first[0]["id"]  # derived, not random
    assert thread_conversation_id("other", "thread") != CONV


def test_unsupported_content_parts_are_refused_naming_the_part() -> None:
    audio = {"type": "audio", "source": {"type": "url", "value": "https://x/a.mp3"}}
    with pytest.raises(APIError) as refused:
        new_items(run_input([{"id": "u", "role": "user", "content": [audio]}]), CONV, Held())
    assert refused.value.param == "messages[0].content[0].type"
