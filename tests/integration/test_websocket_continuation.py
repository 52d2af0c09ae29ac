"""WebSocket mode's connection-local rules, as the Open Responses standard words them: the socket remembers
its latest response (the only way to continue a store:false one), a failed continuation evicts it, an id
that cannot be used is `previous_response_not_found`, and a socket ends at its age limit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

from shared import keys
from shared.stored_form import unpack_json
from tests.conftest import Stack, free_port, wait_until
from tests.integration.conftest import assert_consecutive
from tests.openresponses_spec import Conformance, assert_spec_valid

M = "turnstream-mock"
TERMINAL = ("response.completed", "response.failed", "response.incomplete")
UNSTORED_TTL_S = 300  # TURNSTREAM_UNSTORED_RESPONSE_TTL_S default
Json = dict[str, Any]


def _url(api_url: str) -> str:
    return api_url.replace("http://", "ws://") + "/v1/responses"


@pytest.fixture
def ws(stack: Stack) -> Iterator[ClientConnection]:
    with connect(_url(stack.api_url), open_timeout=10) as socket:
        yield socket


def _send(ws: ClientConnection, **body: Any) -> None:
    ws.send(json.dumps({"type": "response.create", "model": M, **body}))


def _answer(ws: ClientConnection, first: Json | None = None) -> Json:
    """A create's answer: its final Response, or its error event (`first`: its first event, read already)."""
    check = Conformance()
    events: list[Json] = [first] if first else []
    while True:
        event: Json = json.loads(ws.recv(timeout=20))
        if event["type"] == "error" and "response_id" not in event:
            assert not events, "an error event in the middle of a response"
            assert_spec_valid("WebSocketErrorEvent", event)
            return event
        check.event(event)
        events.append(event)
        if event["type"] in TERMINAL:
            assert_consecutive([e["sequence_number"] for e in events])
            response: Json = event["response"]
            return response


def _text(response: Json) -> str:
    return str(response["output"][-1]["content"][0]["text"])


def _is_previous_not_found(error: Json) -> bool:
    return (error["type"], error["status"], error["error"]["code"], error["error"]["param"]) == (
        "error", 400, "previous_response_not_found", "previous_response_id"
    )


def test_a_store_false_turn_is_continued_from_the_socket_memory(
    ws: ClientConnection, stack: Stack, rds: redis.Redis
) -> None:
    _send(ws, input="My name is Asha.", store=False)
    told = _answer(ws)
    assert told["status"] == "completed" and told["store"] is False
    # Its working state in Redis lapses (here: at once); the socket still has it.
    rds.delete(keys.response(told["id"]), keys.events(told["id"]))
    _send(ws, input="What is my name?", store=False, previous_response_id=told["id"])
    asked = _answer(ws)
    assert _text(asked) == "Your name is Asha."
    assert asked["previous_response_id"] == told["id"]
    # Chained again: the remembered context grows with each turn.
    _send(ws, input="[echo-request]", store=False, previous_response_id=asked["id"])
    sent = json.loads(_text(_answer(ws)))["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == [
        "My name is Asha.", "What is my name?", "[echo-request]"
    ]
    # Nothing of the unstored chain is kept beyond the store:false rules: working state that lapses.
    assert 0 < rds.ttl(keys.response(asked["id"])) <= UNSTORED_TTL_S
    assert httpx.get(f"{stack.base_url}/responses/{asked['id']}").status_code == 404


def test_a_store_false_id_is_previous_response_not_found_on_a_new_socket_and_over_http(stack: Stack) -> None:
    with connect(_url(stack.api_url)) as ws:
        _send(ws, input="My name is Asha.", store=False)
        told = _answer(ws)
    with connect(_url(stack.api_url)) as ws:
        _send(ws, input="What is my name?", store=False, previous_response_id=told["id"])
        assert _is_previous_not_found(_answer(ws))
    reply = httpx.post(f"{stack.base_url}/responses",
                       json={"model": M, "input": "What is my name?", "previous_response_id": told["id"]})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "previous_response_not_found"


def test_only_the_latest_response_of_the_socket_is_remembered(ws: ClientConnection) -> None:
    _send(ws, input="My name is Asha.", store=False)
    older = _answer(ws)
    _send(ws, input="count to 2", store=False)
    _answer(ws)
    _send(ws, input="What is my name?", store=False, previous_response_id=older["id"])
    assert _is_previous_not_found(_answer(ws))


def test_a_stored_turn_cannot_continue_an_unstored_one(ws: ClientConnection) -> None:
    _send(ws, input="My name is Asha.", store=False)
    told = _answer(ws)
    _send(ws, input="What is my name?", previous_response_id=told["id"])  # store defaults to true
    error = _answer(ws)
    assert _is_previous_not_found(error) and "store: false" in error["error"]["message"]


def test_a_stored_latest_response_is_continued_without_its_context_in_the_job(
    ws: ClientConnection, rds: redis.Redis
) -> None:
    _send(ws, input="My name is Asha.")
    told = _answer(ws)
    _send(ws, input="What is my name?", previous_response_id=told["id"])
    asked = _answer(ws)
    assert _text(asked) == "Your name is Asha."
    # A stored chain is read from Redis by the worker, so the job carries no copy of it.
    request = json.loads(unpack_json(rds.hget(keys.response(asked["id"]), "request") or b"{}"))
    assert request["context"] is None and request["previous_response_id"] == told["id"]


FAILURES = {
    "refused": {"temperature": 3},  # a 400 before the turn is accepted
    "failed": {"input": "[fail]"},  # accepted, then response.failed
}


@pytest.mark.parametrize("failure", FAILURES, ids=list(FAILURES))
def test_a_failed_continuation_evicts_what_it_continued(ws: ClientConnection, failure: str) -> None:
    _send(ws, input="My name is Asha.", store=False)
    told = _answer(ws)
    _send(ws, **{"input": "What is my name?", "store": False, "previous_response_id": told["id"], **FAILURES[failure]})
    failed = _answer(ws)
    if failure == "refused":
        assert failed["type"] == "error" and failed["status"] == 400
    else:
        assert failed["status"] == "failed"
    _send(ws, input="What is my name?", store=False, previous_response_id=told["id"])
    assert _is_previous_not_found(_answer(ws))


def test_a_cancelled_continuation_evicts_nothing_and_is_continued(ws: ClientConnection, stack: Stack) -> None:
    _send(ws, input="My name is Asha.", store=False)
    told = _answer(ws)
    _send(ws, input="count to 2000 [delay=5ms]", store=False, previous_response_id=told["id"])
    created = json.loads(ws.recv(timeout=20))
    # Unstored, it cannot be cancelled over HTTP; the socket that created it can.
    assert httpx.post(f"{stack.base_url}/responses/{created['response']['id']}/cancel").status_code == 404
    ws.send(json.dumps({"type": "response.cancel"}))
    assert _answer(ws, created)["status"] == "cancelled"
    # Not a failure: the cancelled response is the socket's latest, with the context it continued.
    _send(ws, input="What is my name?", store=False, previous_response_id=created["response"]["id"])
    assert _text(_answer(ws)) == "Your name is Asha."


@contextmanager
def extra_api(stack: Stack, **settings: str) -> Iterator[str]:
    """Another API process on the suite's Redis and workers, with its own settings; yields its WebSocket URL."""
    port = free_port()
    name = f"api-ws-{port}"
    stack.spawn(name, "api", env={"TURNSTREAM_PORT": str(port), **settings})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "the API")
        yield _url(base)
    finally:
        stack.stop(name)


def _assert_limit_reached_and_closed(ws: ClientConnection) -> None:
    error = json.loads(ws.recv(timeout=10))
    assert_spec_valid("WebSocketErrorEvent", error)
    assert error["error"]["code"] == "websocket_connection_limit_reached"
    with pytest.raises(ConnectionClosedOK):
        ws.recv(timeout=10)
    assert ws.close_code == 1000


def test_a_socket_past_its_age_limit_ends_after_its_response_with_connection_limit_reached(stack: Stack) -> None:
    with extra_api(stack, TURNSTREAM_WEBSOCKET_MAX_CONNECTION_S="1.5") as url:
        with connect(url) as idle:
            _assert_limit_reached_and_closed(idle)
        with connect(url) as busy:
            opened = time.monotonic()
            _send(busy, input="count to 400 [delay=5ms]")  # about 2 s: still running at the limit
            _send(busy, input="count to 2")  # waiting at the limit: never run
            final = _answer(busy)
            assert final["status"] == "completed" and time.monotonic() - opened > 1.5
            _assert_limit_reached_and_closed(busy)


def test_creates_past_the_waiting_limit_are_refused_at_once(stack: Stack) -> None:
    with extra_api(stack, TURNSTREAM_WEBSOCKET_MAX_QUEUED_CREATES="2") as url, connect(url) as ws:
        _send(ws, input="count to 200 [delay=5ms]")
        created = json.loads(ws.recv(timeout=20))
        for n in (2, 3, 4):
            _send(ws, input=f"count to {n}")
        answers: list[Json] = []
        while len([a for a in answers if a["type"] in TERMINAL]) < 3:
            answers.append(json.loads(ws.recv(timeout=20)))
        refused = [a for a in answers if a["type"] == "error"]
        assert len(refused) == 1 and refused[0]["status"] == 429
        assert refused[0]["error"]["code"] == "too_many_queued_creates"
        texts = [_text(a["response"]) for a in answers if a["type"] == "response.completed"]
        assert texts[1:] == ["1 2", "1 2 3"]
        # Refused at once, not in its turn: before the response in flight had ended.
        first_end = next(i for i, a in enumerate(answers) if a.get("response_id") == created["response"]["id"]
                         and a["type"] in TERMINAL)
        assert answers.index(refused[0]) < first_end
