"""Every event and item builder, and the Response in every status, against the Open Responses spec and the SDK."""

from __future__ import annotations

from typing import Any

import pytest

from shared import events
from shared.models import Status, TurnOutcome, TurnRequest, Usage
from shared.response_object import build_response
from tests.openresponses_spec import Conformance

MSG, FC, FCO, RS = "msg_1", "fc_1", "fco_1", "rs_1"


def _numbered(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "sequence_number": 3}  # what Redis splices in when the entry is written


@pytest.mark.parametrize(
    "event",
    [
        events.output_item_added(0, events.message_item(MSG, "", "in_progress")),
        events.content_part_added(MSG, 0),
        events.text_delta(MSG, 0, "Hel"),
        events.text_done(MSG, 0, "Hello"),
        events.content_part_done(MSG, 0, "Hello"),
        events.output_item_done(0, events.message_item(MSG, "Hello", "completed")),
        events.output_item_added(1, events.function_call_item(FC, "call_1", "get_time", "", "in_progress")),
        events.arguments_delta(FC, 1, '{"zone"'),
        events.arguments_done(FC, 1, "get_time", '{"zone": "UTC"}'),
        events.output_item_done(1, events.function_call_item(FC, "call_1", "get_time", "{}", "completed")),
        events.output_item_added(2, events.function_call_output_item(FCO, "call_1", "", "in_progress")),
        events.output_item_done(2, events.function_call_output_item(FCO, "call_1", "12:00", "completed")),
        events.output_item_added(3, events.reasoning_item(RS, "", "in_progress")),
        events.content_part_added(RS, 3, "reasoning"),
        events.part_delta("reasoning", RS, 3, "Think"),
        events.part_done("reasoning", RS, 3, "Thinking."),
        events.content_part_done(RS, 3, "Thinking.", "reasoning"),
        events.output_item_done(3, events.reasoning_item(RS, "Thinking.", "completed")),
        events.content_part_added(MSG, 4, "refusal"),
        events.part_delta("refusal", MSG, 4, "I can't"),
        events.part_done("refusal", MSG, 4, "I can't help."),
        events.content_part_done(MSG, 4, "I can't help.", "refusal"),
        events.output_item_done(4, events.message_item(MSG, "I can't help.", "completed", "refusal")),
    ],
    ids=lambda e: f"{e['type']}-{e['output_index']}",
)
def test_each_event_builder_conforms(event: dict[str, Any]) -> None:
    Conformance().event(_numbered(event))


def _request(**overrides: Any) -> TurnRequest:
    return TurnRequest(response_id="resp_1", model="turnstream-mock", input=[], **overrides)


@pytest.mark.parametrize("status", list(Status))
def test_the_response_conforms_in_every_status(status: Status) -> None:
    outcome = TurnOutcome(
        status=status,
        output=[events.message_item(MSG, "Hi", "incomplete" if status == Status.INCOMPLETE else "completed")],
        usage=Usage(input_tokens=3, output_tokens=1),
        error={"code": "server_error", "message": "boom"} if status == Status.FAILED else None,
        incomplete_reason="max_output_tokens" if status == Status.INCOMPLETE else None,
    )
    response = build_response(_request(), status, outcome if status.terminal else None)
    Conformance().event(_numbered(events.lifecycle(events.TERMINAL_TYPE_FOR_STATUS.get(status, events.IN_PROGRESS),
                                                   response)))
    assert (response["completed_at"] is not None) == (status == Status.COMPLETED)


def test_every_setting_is_echoed_as_sent() -> None:
    req = _request(
        instructions="Be terse.",
        tools=[{"type": "function", "name": "f", "description": None, "parameters": None, "strict": True}],
        tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"}]},
        text={"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"},
                         "description": None, "strict": True}, "verbosity": "low"},
        temperature=0, top_p=0.5, presence_penalty=-1, frequency_penalty=1.5, top_logprobs=0,
        reasoning={"effort": "low", "summary": "auto"}, max_tool_calls=3, service_tier="flex",
        safety_identifier="user-7", prompt_cache_key="k", truncation="auto", metadata={"a": "b"},
    )
    response = build_response(req, Status.QUEUED)
    Conformance().response(response)
    assert response["temperature"] == 0.0 and isinstance(response["temperature"], float)
    assert response["reasoning"] == {"effort": "low", "summary": "auto"}
    assert (response["service_tier"], response["truncation"], response["max_tool_calls"]) == ("flex", "auto", 3)
    assert response["tool_choice"]["mode"] == "required" and response["text"]["verbosity"] == "low"
