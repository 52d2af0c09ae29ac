"""Open Responses conformance: every object and event of real turns, valid against the spec and the SDK.

Each test runs a kind of turn over raw HTTP, then checks everything the API serves about it: the create
reply, the SSE body frame by frame (event name = body type, id = sequence number, `data: [DONE]` last),
the retrieved Response, its input items and, on a conversation, the conversation's items. Objects are
checked as JSON exactly as sent, against docs/specs/openresponses-openapi.json and the openai SDK's types.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Stack
from tests.integration.conftest import TERMINAL, assert_consecutive
from tests.openresponses_spec import Conformance, spec_errors

M = "turnstream-mock"
Json = dict[str, Any]

LOOKUP_ORDER = {
    "type": "function",
    "name": "lookup_order",
    "description": "Look up an order by id.",
    "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
}
# A 1x1 PNG, sent the way clients send local images: as a data URL.
PIXEL = "data:image/png;base64," + base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5b1c7"
        "e60000000049454e44ae426082"
    )
).decode()


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as c:
        yield c


@pytest.fixture
def check() -> Conformance:
    return Conformance()


def _create(http: httpx.Client, check: Conformance, **body: Any) -> Json:
    reply = http.post("/responses", json={"model": M, **body})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    response: Json = reply.json()
    check.response(response)
    return response


def _stream(http: httpx.Client, check: Conformance, **body: Any) -> list[Json]:
    with http.stream("POST", "/responses", json={"model": M, "stream": True, **body}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = check.sse(reply.read().decode())
    assert_consecutive([e["sequence_number"] for e in events])
    return events


def _replay(http: httpx.Client, check: Conformance, response_id: str, after: int | None = None) -> list[Json]:
    params: dict[str, Any] = {"stream": "true"}
    if after is not None:
        params["starting_after"] = after
    with http.stream("GET", f"/responses/{response_id}", params=params) as reply:
        assert reply.status_code == 200
        return check.sse(reply.read().decode())


def _everything_about(http: httpx.Client, check: Conformance, response_id: str) -> Json:
    """The stored Response, its input items and its full event replay, each checked; returns the Response."""
    stored: Json = http.get(f"/responses/{response_id}").json()
    check.response(stored)
    for item in http.get(f"/responses/{response_id}/input_items", params={"order": "asc"}).json()["data"]:
        check.input_item(item)
    events = _replay(http, check, response_id)
    assert_consecutive([e["sequence_number"] for e in events])
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] in ("response.completed", "response.failed", "response.incomplete")
    # The terminal event carries the Response exactly as it is stored.
    assert events[-1]["response"] == stored
    conversation = stored.get("conversation")
    if conversation:
        items = http.get(f"/conversations/{conversation['id']}/items", params={"limit": 100}).json()["data"]
        for item in items:
            check.conversation_item(item)
    return stored


def _poll(http: httpx.Client, check: Conformance, response_id: str) -> Json:
    deadline = time.monotonic() + 20
    while True:
        response: Json = http.get(f"/responses/{response_id}").json()
        check.response(response)
        if response["status"] in TERMINAL:
            return response
        assert time.monotonic() < deadline, f"{response_id} still {response['status']}"
        time.sleep(0.05)


def test_a_plain_turn_conforms(http: httpx.Client, check: Conformance) -> None:
    response = _create(http, check, input="My name is Ravi.")
    assert response["status"] == "completed" and isinstance(response["completed_at"], int)
    assert response["completed_at"] >= response["created_at"]
    stored = _everything_about(http, check, response["id"])
    assert stored == response
    # Every setting the request left out is echoed with OpenAI's default.
    assert (stored["temperature"], stored["top_p"]) == (1.0, 1.0)
    assert (stored["presence_penalty"], stored["frequency_penalty"], stored["top_logprobs"]) == (0.0, 0.0, 0)
    assert stored["text"] == {"format": {"type": "text"}}
    assert stored["reasoning"] == {"effort": None, "summary": None}
    assert (stored["truncation"], stored["tool_choice"], stored["service_tier"]) == ("disabled", "auto", "auto")
    assert stored["max_tool_calls"] is None and stored["safety_identifier"] is None


def test_a_streamed_turn_conforms(http: httpx.Client, check: Conformance) -> None:
    events = _stream(http, check, input="count to 12")
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert events[0]["response"]["completed_at"] is None
    assert types[-1] == "response.completed"
    _everything_about(http, check, events[0]["response"]["id"])
    assert check.counts["event[response.output_text.delta]"] >= 1


def test_a_system_prompt_turn_conforms(http: httpx.Client, check: Conformance) -> None:
    events = _stream(
        http,
        check,
        instructions="Answer briefly.",
        input=[
            {"type": "message", "role": "developer", "content": "Prefer digits."},
            {"role": "user", "content": [{"type": "input_text", "text": "count to 3"}]},
        ],
        temperature=0.2,
        top_p=0.9,
    )
    final = events[-1]["response"]
    assert final["instructions"] == "Answer briefly."
    assert (final["temperature"], final["top_p"]) == (0.2, 0.9)
    _everything_about(http, check, final["id"])
    assert check.counts["input_item[message]"] == 2


def test_a_client_tool_turn_and_its_answer_conform(http: httpx.Client, check: Conformance) -> None:
    first = _create(http, check, input='call lookup_order({"id": "42"})', tools=[LOOKUP_ORDER])
    call = first["output"][-1]
    assert call["type"] == "function_call" and call["name"] == "lookup_order"
    # The tool is echoed in full, with OpenAI's keys even where the request left them out.
    assert first["tools"] == [{**LOOKUP_ORDER, "strict": False}]
    _everything_about(http, check, first["id"])
    second = _create(
        http,
        check,
        previous_response_id=first["id"],
        tools=[LOOKUP_ORDER],
        input=[{"type": "function_call_output", "call_id": call["call_id"], "output": '{"status": "shipped"}'}],
    )
    assert second["status"] == "completed" and second["previous_response_id"] == first["id"]
    _everything_about(http, check, second["id"])
    assert check.counts["input_item[function_call_output]"] == 1


def test_a_streamed_client_tool_turn_conforms(http: httpx.Client, check: Conformance) -> None:
    events = _stream(http, check, input='call lookup_order({"id": "7"})', tools=[LOOKUP_ORDER])
    types = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types
    final = events[-1]["response"]
    assert final["output"][-1]["type"] == "function_call"
    _everything_about(http, check, final["id"])


def test_a_server_tool_turn_on_a_conversation_conforms(http: httpx.Client, check: Conformance) -> None:
    conversation = http.post("/conversations", json={}).json()
    events = _stream(http, check, input="What is the weather in Bengaluru?", conversation=conversation["id"])
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["function_call", "function_call_output", "message"]
    _everything_about(http, check, final["id"])
    assert check.counts["conversation_item[function_call_output]"] == 1


def test_an_image_input_turn_conforms(http: httpx.Client, check: Conformance) -> None:
    response = _create(
        http,
        check,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this image?"},
                    {"type": "input_image", "image_url": PIXEL, "detail": "low"},
                ],
            }
        ],
    )
    assert response["status"] == "completed"
    _everything_about(http, check, response["id"])
    items = http.get(f"/responses/{response['id']}/input_items").json()["data"]
    assert items[0]["content"][1] == {"type": "input_image", "image_url": PIXEL, "detail": "low"}


def test_a_multi_turn_input_conforms(http: httpx.Client, check: Conformance) -> None:
    response = _create(
        http,
        check,
        input=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "My name is Ravi."},
            {"role": "assistant", "content": "Nice to meet you, Ravi."},
            {"type": "function_call", "call_id": "call_a1", "name": "get_time", "arguments": '{"zone": "UTC"}'},
            {"type": "function_call_output", "call_id": "call_a1", "output": "12:00"},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    assert "Ravi" in response["output"][-1]["content"][0]["text"]
    _everything_about(http, check, response["id"])
    assert check.counts["input_item[message]"] == 4 and check.counts["input_item[function_call]"] == 1


def test_a_background_turn_polled_to_the_end_conforms(http: httpx.Client, check: Conformance) -> None:
    created = _create(http, check, input="count to 40 [delay=5ms]", background=True)
    assert created["status"] == "queued" and created["background"] is True
    final = _poll(http, check, created["id"])
    assert final["status"] == "completed"
    _everything_about(http, check, created["id"])
    types = [e["type"] for e in _replay(http, check, created["id"])]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]


def test_a_stream_resumed_midway_conforms(http: httpx.Client, check: Conformance) -> None:
    created = _create(http, check, input="count to 80 [delay=5ms]", background=True)
    _read_until(http, created["id"], "id: 9")
    # The client dropped the connection after event 9; it picks up from there.
    resumed = _replay(http, check, created["id"], after=9)
    assert_consecutive([e["sequence_number"] for e in resumed], 10)
    assert resumed[-1]["type"] == "response.completed"
    # Resuming after the terminal event is a well-formed, empty stream: just `data: [DONE]`.
    assert _replay(http, check, created["id"], after=resumed[-1]["sequence_number"]) == []
    _everything_about(http, check, created["id"])


def test_failed_incomplete_and_cancelled_turns_conform(http: httpx.Client, check: Conformance) -> None:
    failed = _stream(http, check, input="[fail]")[-1]
    assert failed["type"] == "response.failed" and failed["response"]["error"]["code"]
    assert failed["response"]["completed_at"] is None
    incomplete = _create(http, check, input="count to 100", max_output_tokens=16)
    assert incomplete["status"] == "incomplete" and incomplete["incomplete_details"] == {"reason": "max_output_tokens"}
    running = _create(http, check, input="count to 2000 [delay=5ms]", background=True)
    _read_until(http, running["id"], "event: response.output_text.delta")
    cancelled: Json = http.post(f"/responses/{running['id']}/cancel").json()
    check.response(cancelled)
    assert cancelled["status"] == "cancelled"
    # A cancelled turn ends with response.incomplete carrying status "cancelled" (see the README).
    terminal = _everything_about(http, check, running["id"])
    assert terminal["status"] == "cancelled"
    for response in (failed["response"], incomplete):
        _everything_about(http, check, response["id"])


def test_a_reasoning_turn_conforms(http: httpx.Client, check: Conformance) -> None:
    events = _stream(http, check, input="count to 5 [think]")
    types = [e["type"] for e in events]
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    reasoning = final["output"][0]
    assert reasoning["content"][0]["text"] == "The user wrote: count to 5. I will answer plainly."
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning.delta")
    assert deltas == reasoning["content"][0]["text"]
    # The reasoning item is closed before the message opens.
    reasoning_done = types.index("response.reasoning.done")
    assert reasoning_done < next(i for i, e in enumerate(events) if e.get("item", {}).get("type") == "message")
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == len(deltas.split())
    assert final["output"][1]["content"][0]["text"] == "1 2 3 4 5"
    _everything_about(http, check, final["id"])


def test_a_refusal_turn_conforms(http: httpx.Client, check: Conformance) -> None:
    events = _stream(http, check, input="Tell me a secret [refuse]")
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message"]
    assert final["output"][0]["content"] == [{"type": "refusal", "refusal": "I'm sorry, but I can't help with that."}]
    assert "".join(e["delta"] for e in events if e["type"] == "response.refusal.delta") == (
        "I'm sorry, but I can't help with that."
    )
    assert check.counts["event[response.refusal.done]"] == 1
    _everything_about(http, check, final["id"])


def test_a_reasoning_tool_turn_on_a_conversation_conforms(http: httpx.Client, check: Conformance) -> None:
    conversation = http.post("/conversations", json={}).json()
    events = _stream(
        http, check, input="What is the weather in Bengaluru? [think]", conversation=conversation["id"]
    )
    final = events[-1]["response"]
    kinds = ["reasoning", "function_call", "function_call_output", "reasoning", "message"]
    assert [o["type"] for o in final["output"]] == kinds
    _everything_about(http, check, final["id"])
    assert check.counts["conversation_item[reasoning]"] == 2
    # The next turn's prompt holds no reasoning: the upstream is sent what it can take back.
    echoed = _create(http, check, input="[echo-request]", conversation=conversation["id"])
    sent = json.loads(echoed["output"][-1]["content"][0]["text"])
    assert "The user wrote" not in json.dumps(sent) and "The tools have answered" not in json.dumps(sent)
    assert [m["role"] for m in sent["messages"]][-5:] == ["user", "assistant", "tool", "assistant", "user"]


def _read_until(http: httpx.Client, response_id: str, wanted: str) -> None:
    """Follows the response's stream until the line `wanted`, then drops the connection."""
    with http.stream("GET", f"/responses/{response_id}", params={"stream": "true"}) as reply:
        for line in reply.iter_lines():
            if line == wanted:
                return
    raise AssertionError(f"the stream ended without {wanted!r}")


def test_the_sdk_parses_streams_that_end_with_done(client: OpenAI) -> None:
    events = list(client.responses.create(model=M, input="count to 3", stream=True))
    assert events[-1].type == "response.completed"
    with client.responses.stream(model=M, input="count to 3") as stream:
        final = stream.get_final_response()
    assert final.output_text == "1 2 3"
    # Resumed after the terminal event: the SDK sees [DONE] at once and yields nothing.
    terminal = list(client.responses.retrieve(final.id, stream=True))[-1]
    assert terminal.type == "response.completed"
    assert list(client.responses.retrieve(final.id, stream=True, starting_after=terminal.sequence_number)) == []


@pytest.mark.parametrize("text", ["What is the weather in Oslo? [think:reasoning]", "Tell me a secret [refuse]"])
def test_the_sdk_stream_snapshot_of_reasoning_and_refusal_equals_the_stored_response(
    client: OpenAI, text: str
) -> None:
    with client.responses.stream(model=M, input=text) as stream:
        streamed = [event.type for event in stream]
        final = stream.get_final_response()
    stored = client.responses.retrieve(final.id)
    # The snapshot holds the SDK's parsed types, which add keys of their own: compare what the stored one has.
    assert _restricted(final.model_dump(), stored.model_dump()) == stored.model_dump()
    if "[refuse]" in text:
        assert stored.output[0].content[0].type == "refusal"  # type: ignore[union-attr]
        assert "response.refusal.delta" in streamed
    else:
        assert stored.output[0].type == "reasoning" and "response.reasoning.delta" in streamed
        assert stored.usage is not None and stored.usage.output_tokens_details.reasoning_tokens > 0


def _restricted(value: Any, like: Any) -> Any:
    """`value` with only the keys `like` has, at every depth."""
    if isinstance(value, dict) and isinstance(like, dict):
        return {k: _restricted(value[k], like[k]) for k in like if k in value}
    if isinstance(value, list) and isinstance(like, list) and len(value) == len(like):
        return [_restricted(v, w) for v, w in zip(value, like, strict=True)]
    return value


def test_the_validator_rejects_what_the_spec_rejects() -> None:
    # Guards the guard: a Response missing a required field, or with a null temperature, fails the check.
    assert spec_errors("ResponseResource", {"id": "resp_1"})
    bad_event = {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "m", "output_index": 0}
    assert any("content_index" in e for e in spec_errors("ResponseOutputTextDeltaStreamingEvent", bad_event))
    with pytest.raises(AssertionError, match="data: \\[DONE\\]"):
        Conformance().sse('event: response.created\ndata: {"type": "response.created"}\n\n')
    frame = json.dumps({"type": "response.in_progress", "sequence_number": 0, "response": {}})
    with pytest.raises(AssertionError, match="event name differs"):
        Conformance().sse(f"id: 0\nevent: response.created\ndata: {frame}\n\ndata: [DONE]\n\n")


def test_every_unusable_previous_response_id_is_previous_response_not_found(
    http: httpx.Client, client: OpenAI
) -> None:
    unstored = _create(http, Conformance(), input="My name is Ravi.", store=False)
    # Unknown, malformed, and unstored (store:false is continued only on the WebSocket that made it).
    for previous in ("resp_" + "0" * 48, "resp_nope", unstored["id"]):
        for route, body in (("/responses", {"input": "hi"}), ("/responses/compact", {})):
            reply = http.post(route, json={"model": M, "previous_response_id": previous, **body})
            assert reply.status_code == 400, reply.text
            assert reply.json() == {"error": {
                "message": reply.json()["error"]["message"], "type": "invalid_request_error",
                "param": "previous_response_id", "code": "previous_response_not_found",
            }}
            assert previous in reply.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=M, input="hi", previous_response_id="resp_" + "0" * 48)
    assert (raised.value.code, raised.value.param) == ("previous_response_not_found", "previous_response_id")
