"""WebSocket mode on /v1/responses with a real WebSocket client: many turns on one socket, one at a time, tool
loops, errors as the spec's error event, resume after a dropped socket. The standard's continuation and
connection-limit rules are in test_websocket_continuation.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Stack
from tests.integration.conftest import TERMINAL as SETTLED
from tests.integration.conftest import assert_consecutive, wait_for
from tests.openresponses_spec import Conformance, assert_spec_valid

M = "turnstream-mock"
TERMINAL = ("response.completed", "response.failed", "response.incomplete")
LOOKUP_ORDER = {
    "type": "function",
    "name": "lookup_order",
    "description": "Look up an order.",
    "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
}
Json = dict[str, Any]


@pytest.fixture
def ws(stack: Stack) -> Iterator[ClientConnection]:
    with connect(_url(stack), open_timeout=10) as socket:
        yield socket


def _send(ws: ClientConnection, **body: Any) -> None:
    ws.send(json.dumps({"type": "response.create", "model": M, **body}))


def _receive(ws: ClientConnection, check: Conformance | None = None) -> Json:
    message: Json = json.loads(ws.recv(timeout=20))
    if check is not None and message["type"] != "error":
        check.event(message)  # as sent, response_id included: an extra field both the spec and the SDK allow
    return message


def _turn(ws: ClientConnection, check: Conformance) -> list[Json]:
    """Every event of the one turn in flight, through its terminal event."""
    events = [_receive(ws, check)]
    while events[-1]["type"] not in TERMINAL:
        events.append(_receive(ws, check))
    assert_consecutive([e["sequence_number"] for e in events])
    assert {e["response_id"] for e in events} == {events[0]["response"]["id"]}
    return events


def test_a_client_tool_loop_runs_over_one_socket(ws: ClientConnection) -> None:
    check = Conformance()
    _send(ws, input='call lookup_order({"id": "1"})', tools=[LOOKUP_ORDER])
    previous: Json | None = None
    for round_no in range(1, 4):
        events = _turn(ws, check)
        final = events[-1]["response"]
        assert events[0]["type"] == "response.created" and final["status"] == "completed"
        call = final["output"][-1]
        if previous is not None:
            assert final["previous_response_id"] == previous["id"]
        if round_no == 3:
            assert call["type"] == "message"
            assert call["content"][0]["text"] == "Tool lookup_order returned: order 2 shipped."
            break
        assert call["type"] == "function_call" and call["name"] == "lookup_order"
        # The client runs its tool, then asks again on the same socket, chaining by previous_response_id.
        nxt = f'call lookup_order({{"id": "{round_no + 1}"}})' if round_no < 2 else None
        output = [{"type": "function_call_output", "call_id": call["call_id"], "output": f"order {round_no} shipped"}]
        _send(ws, previous_response_id=final["id"], tools=[LOOKUP_ORDER],
              input=output + ([{"role": "user", "content": nxt}] if nxt else []))
        previous = final
    assert check.counts["event[response.function_call_arguments.done]"] == 2


def test_sequential_turns_on_one_socket_share_a_conversation(ws: ClientConnection, stack: Stack) -> None:
    check = Conformance()
    conversation = httpx.post(f"{stack.base_url}/conversations", json={}).json()["id"]
    _send(ws, input="My name is Asha.", conversation=conversation)
    _turn(ws, check)
    _send(ws, input="What is my name?", conversation=conversation)
    answer = _turn(ws, check)[-1]["response"]
    assert answer["output"][0]["content"][0]["text"] == "Your name is Asha."


def test_two_creates_on_one_socket_run_one_after_the_other(ws: ClientConnection, stack: Stack) -> None:
    check = Conformance()
    asks = {"count to 40 [delay=5ms]": 40, "count to 25 [delay=5ms]": 25}
    for ask in asks:  # back to back, on different conversations: nothing but the socket orders them
        conversation = httpx.post(f"{stack.base_url}/conversations", json={}).json()["id"]
        _send(ws, input=ask, conversation=conversation)
    first, second = _turn(ws, check), _turn(ws, check)
    # _turn read each response whole, so every event of the first arrived before any of the second.
    assert first[0]["response"]["id"] != second[0]["response"]["id"]
    for events, n in zip((first, second), asks.values(), strict=True):
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == " ".join(str(i) for i in range(1, n + 1))


def test_response_cancel_stops_the_response_in_flight_and_drops_the_creates_waiting(ws: ClientConnection) -> None:
    check = Conformance()
    _send(ws, input="count to 2000 [delay=5ms]")
    created = _receive(ws, check)
    assert created["type"] == "response.created"
    _send(ws, input="count to 3")
    _send(ws, input="count to 4")
    ws.send(json.dumps({"type": "response.cancel"}))
    rest = _turn_after(ws, check, created)
    assert rest[-1]["response"]["status"] == "cancelled"
    for _ in range(2):
        dropped = _receive(ws)
        assert_spec_valid("WebSocketErrorEvent", dropped)
        assert (dropped["status"], dropped["error"]["code"]) == (400, "cancelled")
    # The socket goes on with the next create.
    _send(ws, input="count to 2")
    assert _turn(ws, check)[-1]["response"]["output"][0]["content"][0]["text"] == "1 2"


def _turn_after(ws: ClientConnection, check: Conformance, first: Json) -> list[Json]:
    events = [first]
    while events[-1]["type"] not in TERMINAL:
        event = _receive(ws, check)
        assert event["response_id"] == first["response"]["id"], event
        events.append(event)
    return events[1:]


ERRORS: list[tuple[str, str, int, str | None]] = [
    ("not json", "{oops", 400, None),
    ("not an object", "[1]", 400, None),
    ("unknown type", json.dumps({"type": "session.update"}), 400, "type"),
    ("stream is http only", json.dumps({"type": "response.create", "model": M, "input": "hi", "stream": True}),
     400, "stream"),
    ("background is http only",
     json.dumps({"type": "response.create", "model": M, "input": "hi", "background": True}), 400, "background"),
    ("bad model", json.dumps({"type": "response.create", "model": "gpt-nope", "input": "hi"}), 400, "model"),
    ("missing input", json.dumps({"type": "response.create", "model": M}), 400, "input"),
    ("unknown previous response",
     json.dumps({"type": "response.create", "model": M, "input": "hi", "previous_response_id": "resp_nope"}),
     400, "previous_response_id"),
]


@pytest.mark.parametrize(("name", "raw", "status", "param"), ERRORS, ids=[e[0] for e in ERRORS])
def test_a_refused_create_is_the_spec_error_event_and_the_socket_goes_on(
    ws: ClientConnection, name: str, raw: str, status: int, param: str | None
) -> None:
    ws.send(raw)
    error = _receive(ws)
    assert_spec_valid("WebSocketErrorEvent", error)
    assert error["status"] == status and error["error"]["param"] == param and error["error"]["message"]
    _send(ws, input="count to 2")
    assert _turn(ws, Conformance())[-1]["response"]["status"] == "completed"


def test_an_oversized_message_is_refused(ws: ClientConnection) -> None:
    # The test stack sets TURNSTREAM_MAX_INPUT_BYTES=65536.
    _send(ws, input="x" * 70_000)
    error = _receive(ws)
    assert (error["type"], error["status"], error["error"]["code"]) == ("error", 413, "too_large")


# Opted into cancel_on_disconnect, the turn runs on all the same: its client resumes within the grace.
@pytest.mark.parametrize("opt", [{}, {"cancel_on_disconnect": True}], ids=["plain", "cancel-on-disconnect"])
def test_a_dropped_socket_leaves_the_turn_running_and_it_resumes_over_sse(stack: Stack, opt: Json) -> None:
    with connect(_url(stack)) as ws:
        _send(ws, input="count to 60 [delay=10ms]", **opt)
        seen = [_receive(ws) for _ in range(8)]
    response_id, last = seen[0]["response"]["id"], seen[-1]["sequence_number"]
    with httpx.stream(
        "GET", f"{stack.base_url}/responses/{response_id}", params={"stream": "true", "starting_after": last}
    ) as reply:
        rest = Conformance().sse(reply.read().decode())
    assert_consecutive([e["sequence_number"] for e in seen + rest])
    assert rest[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in seen + rest if e["type"] == "response.output_text.delta")
    assert text == " ".join(str(i) for i in range(1, 61))


def test_a_closed_socket_cancels_its_opted_in_turn_while_quiet_and_never_runs_the_creates_waiting(
    stack: Stack, client: OpenAI
) -> None:
    conversation = client.conversations.create().id
    with connect(_url(stack)) as ws:
        _send(ws, input='call slow_tool({"seconds": 5})', conversation=conversation, cancel_on_disconnect=True)
        _send(ws, input="count to 3", conversation=conversation, cancel_on_disconnect=True)  # waits behind it
        seen = [_receive(ws)]
        while seen[-1]["type"] != "response.function_call_arguments.done":
            seen.append(_receive(ws))
    # The socket closed while the tool runs: nothing is being sent that could fail, yet the turn is cancelled.
    final = wait_for(client, seen[0]["response"]["id"], SETTLED, timeout=10)
    assert final.status == "cancelled"
    asked = [i.content[0].text for i in client.conversations.items.list(conversation).data  # type: ignore[union-attr]
             if i.type == "message" and i.role == "user"]
    assert asked == ['call slow_tool({"seconds": 5})']


def test_an_opted_in_turn_that_ended_leaves_the_next_plain_turn_running_when_the_socket_closes(
    stack: Stack, client: OpenAI
) -> None:
    with connect(_url(stack)) as ws:
        _send(ws, input="count to 2", cancel_on_disconnect=True)
        _turn(ws, Conformance())
        _send(ws, input="count to 60 [delay=10ms]")
        response_id = _receive(ws)["response"]["id"]
    assert wait_for(client, response_id, SETTLED, timeout=30).status == "completed"


def _url(stack: Stack) -> str:
    return stack.api_url.replace("http://", "ws://") + "/v1/responses"


def test_a_hostile_message_gets_an_error_event_and_the_socket_stays_open(stack: Stack) -> None:
    url = stack.base_url.replace("http://", "ws://") + "/responses"
    with connect(url, open_timeout=10) as socket:
        for raw in ("[" * 5_000, '{"type": "response.create", "model": "plain", "input": NaN}'):
            socket.send(raw)
            error = json.loads(socket.recv(timeout=10))
            assert error["type"] == "error" and error["status"] == 400
            assert error["error"]["code"] == "invalid_json"
        socket.send(json.dumps({"type": "response.create", "model": "plain", "input": "count to 2"}))
        assert json.loads(socket.recv(timeout=10))["type"] == "response.created"
