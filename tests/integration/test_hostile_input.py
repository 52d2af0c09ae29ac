"""Hostile input gets a 4xx in OpenAI's shape naming the problem: never a 500, a stray key, or a cut stream."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from openai import OpenAI

from shared import keys
from tests.conftest import Stack, free_port, wait_until

M = "turnstream-mock"
JSON = {"content-type": "application/json"}


def openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return dict(error)


def response_records(rds: redis.Redis) -> set[bytes]:
    return set(rds.scan_iter(match=keys.response("*"), count=1000))


@pytest.fixture(scope="module")
def conversation_id(client: OpenAI) -> str:
    return client.conversations.create(items=[{"type": "message", "role": "user", "content": "seed"}]).id


@pytest.fixture(scope="module")
def finished_id(client: OpenAI) -> str:
    return client.responses.create(model=M, input="count to 3").id


def json_routes(conversation: str) -> list[str]:
    return ["/responses", "/conversations", f"/conversations/{conversation}"]


# --- strict JSON ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roomy_api(stack: Stack) -> Iterator[str]:
    """An API whose size limit (1 MiB, the default) lets 100k-deep bodies reach the decoder."""
    port = free_port()
    stack.spawn("api-roomy", "api", env={"TURNSTREAM_PORT": str(port), "TURNSTREAM_MAX_INPUT_BYTES": "1048576"})
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until(lambda: httpx.get(f"{base}/models").status_code == 200, 30, "the roomy API")
        yield base
    finally:
        stack.stop("api-roomy")


DEEP_BODIES = {
    "100k-deep arrays": b"[" * 100_000 + b"]" * 100_000,
    "100k unclosed arrays": b"[" * 100_000,
    "5k-deep objects": b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    "65 deep in tools[].parameters": json.dumps(
        {"model": M, "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {}}]}
    ).encode().replace(b'"parameters": {}', b'"parameters": ' + b'{"a":' * 62 + b"1" + b"}" * 62),
}


@pytest.mark.parametrize("name", sorted(DEEP_BODIES))
@pytest.mark.parametrize("route", [0, 1, 2], ids=["create response", "create conversation", "update conversation"])
def test_deep_nesting_is_a_400_on_every_json_route(
    roomy_api: str, conversation_id: str, route: int, name: str
) -> None:
    r = httpx.post(roomy_api + json_routes(conversation_id)[route], content=DEEP_BODIES[name], headers=JSON)
    error = openai_error(r, 400)
    assert error["code"] == "invalid_json"
    assert "deeper than 64 levels" in error["message"]


def test_nesting_at_the_limit_is_accepted(client: OpenAI) -> None:
    # The body is an object (1) > tools (2) > a tool (3) > parameters (4) > 60 more levels = 64.
    parameters: dict[str, Any] = {"type": "object"}
    for _ in range(60):
        parameters = {"a": parameters}
    response = client.responses.create(
        model=M, input="hi", tools=[{"type": "function", "name": "f", "parameters": parameters}]
    )
    assert response.status == "completed"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_numbers_in_tool_parameters_are_a_400_and_commit_nothing(
    stack: Stack, rds: redis.Redis, number: str
) -> None:
    before = response_records(rds)
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"n": {"maximum": 0}}}}
    body = json.dumps({"model": M, "input": "hi", "tools": [tool]}).replace('"maximum": 0', f'"maximum": {number}')
    for _ in range(3):  # a client retrying the error must not commit anything either
        error = openai_error(httpx.post(f"{stack.base_url}/responses", content=body, headers=JSON), 400)
        assert "NaN, Infinity and -Infinity are not JSON numbers" in error["message"]
    assert response_records(rds) == before


@pytest.mark.parametrize("route", [0, 1, 2], ids=["create response", "create conversation", "update conversation"])
def test_non_standard_numbers_are_a_400_on_every_json_route(stack: Stack, conversation_id: str, route: int) -> None:
    body = b'{"metadata": {"k": "v"}, "n": NaN}'
    r = httpx.post(stack.base_url + json_routes(conversation_id)[route], content=body, headers=JSON)
    assert "NaN" in openai_error(r, 400)["message"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (0, b'{"model": "turnstream-mock", "input": "\\ud800"}'),
        (0, b'{"model": "turnstream-mock", "input": [{"role": "user", "content": "a \\udfff b"}]}'),
        (1, b'{"items": [{"role": "user", "content": "\\ud800"}]}'),
        (2, b'{"metadata": {"k": "\\ud800"}}'),
    ],
    ids=["input string", "input message", "conversation items", "conversation metadata"],
)
def test_a_lone_surrogate_is_a_400(
    stack: Stack, rds: redis.Redis, conversation_id: str, route: int, body: bytes
) -> None:
    before = response_records(rds)
    r = httpx.post(stack.base_url + json_routes(conversation_id)[route], content=body, headers=JSON)
    assert "lone surrogate" in openai_error(r, 400)["message"]
    assert response_records(rds) == before


def test_a_body_that_is_not_json_by_content_type_is_a_400(stack: Stack) -> None:
    r = httpx.post(f"{stack.base_url}/responses", data={"model": M, "input": "hi"})  # form-encoded
    assert openai_error(r, 400)["code"] == "unsupported_content_type"


def test_a_json_body_without_content_type_is_still_read(stack: Stack) -> None:
    r = httpx.post(f"{stack.base_url}/conversations", content=b'{"metadata": {"k": "v"}}')
    assert r.status_code == 200, r.text
    assert r.json()["metadata"] == {"k": "v"}


# --- ids --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [":items", ":turns", "*", "x"])
def test_a_key_like_conversation_id_is_a_404_on_every_route(
    stack: Stack, rds: redis.Redis, conversation_id: str, suffix: str
) -> None:
    bad = conversation_id + suffix
    base = f"{stack.base_url}/conversations/{bad}"
    for r in (
        httpx.get(base),
        httpx.delete(base),
        httpx.post(base, json={"metadata": {"k": "v"}}),
        httpx.get(f"{base}/items"),
        httpx.get(f"{base}/items/msg_{'0' * 48}"),
    ):
        assert openai_error(r, 404)["code"] == "not_found"
    assert rds.exists(keys.conversation(conversation_id))  # the DELETE did not reach the real one


@pytest.mark.parametrize("as_object", [False, True])
@pytest.mark.parametrize("suffix", [":items", ":turns"])
def test_a_key_like_conversation_in_a_body_is_a_404_and_writes_nothing(
    stack: Stack, rds: redis.Redis, conversation_id: str, suffix: str, as_object: bool
) -> None:
    bad = conversation_id + suffix
    items_before = rds.lrange(keys.conversation_items(conversation_id), 0, -1)
    records_before = response_records(rds)
    conversation: Any = {"id": bad} if as_object else bad
    r = httpx.post(f"{stack.base_url}/responses", json={"model": M, "input": "hi", "conversation": conversation})
    assert openai_error(r, 404, "conversation")["code"] == "not_found"
    # Before ids were checked, this claimed the turn queue of "<id>:items" and wrote "...:<id>:items:turns".
    assert list(rds.scan_iter(match=f"*{bad}:*")) == []
    assert rds.lrange(keys.conversation_items(conversation_id), 0, -1) == items_before
    assert response_records(rds) == records_before


def test_a_malformed_previous_response_id_is_previous_response_not_found(stack: Stack, finished_id: str) -> None:
    for bad in (finished_id + ":x", finished_id.upper(), "resp_*"):
        r = httpx.post(f"{stack.base_url}/responses", json={"model": M, "input": "hi", "previous_response_id": bad})
        assert openai_error(r, 400, "previous_response_id")["code"] == "previous_response_not_found"


@pytest.mark.parametrize("suffix", [":x", "*", "0"])
def test_a_malformed_response_id_is_a_404_on_every_route(stack: Stack, finished_id: str, suffix: str) -> None:
    base = f"{stack.base_url}/responses/{finished_id}{suffix}"
    for r in (
        httpx.get(base),
        httpx.get(base, params={"stream": "true"}),
        httpx.get(f"{base}/input_items"),
        httpx.post(f"{base}/cancel"),
        httpx.delete(base),
    ):
        assert openai_error(r, 404)["code"] == "not_found"
    assert httpx.get(f"{stack.base_url}/responses/{finished_id}").status_code == 200


def test_a_malformed_item_id_is_a_404_and_a_malformed_cursor_a_400(
    stack: Stack, client: OpenAI, conversation_id: str
) -> None:
    real = client.conversations.items.list(conversation_id).data[0].id
    base = f"{stack.base_url}/conversations/{conversation_id}/items"
    assert httpx.get(f"{base}/{real}").status_code == 200
    assert openai_error(httpx.get(f"{base}/{real}:x"), 404)["code"] == "not_found"
    openai_error(httpx.get(base, params={"after": real + ":x"}), 400, "after")


def test_an_input_item_id_of_the_wrong_shape_is_a_400(stack: Stack) -> None:
    body = {"model": M, "input": [{"id": "msg_mine", "role": "user", "content": "hi"}]}
    openai_error(httpx.post(f"{stack.base_url}/responses", json=body), 400, "input[0].id")


# --- stream positions -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-2", str(2**63), str(2**64), str(10**30)])
def test_starting_after_out_of_range_is_a_400(stack: Stack, finished_id: str, value: str) -> None:
    r = httpx.get(f"{stack.base_url}/responses/{finished_id}", params={"stream": "true", "starting_after": value})
    openai_error(r, 400, "starting_after")


@pytest.mark.parametrize("value", ["-2", str(2**63), str(2**64), "1_0", "1 2", "+1", "1.0", "٣"])
def test_last_event_id_out_of_range_or_not_a_number_is_a_400(stack: Stack, finished_id: str, value: str) -> None:
    headers = {"Last-Event-ID": value.encode()}
    r = httpx.get(f"{stack.base_url}/responses/{finished_id}", params={"stream": "true"}, headers=headers)
    openai_error(r, 400, "Last-Event-ID")


def test_resuming_past_the_last_event_is_a_400_not_a_stream_that_never_ends(stack: Stack, finished_id: str) -> None:
    url = f"{stack.base_url}/responses/{finished_id}"
    last = int(httpx.get(url, params={"stream": "true"}).text.split("id: ")[-1].split("\n")[0])
    assert httpx.get(url, params={"stream": "true", "starting_after": str(last)}, timeout=10).status_code == 200
    openai_error(httpx.get(url, params={"stream": "true", "starting_after": str(last + 1)}), 400, "starting_after")
    openai_error(httpx.get(url, params={"stream": "true"}, headers={"Last-Event-ID": str(last + 1)}), 400,
                 "Last-Event-ID")


@pytest.mark.parametrize("how", ["starting_after", "Last-Event-ID"])
def test_minus_one_replays_the_whole_stream(stack: Stack, finished_id: str, how: str) -> None:
    url = f"{stack.base_url}/responses/{finished_id}"
    params = {"stream": "true", **({"starting_after": "-1"} if how == "starting_after" else {})}
    headers = {"Last-Event-ID": "-1"} if how == "Last-Event-ID" else {}
    text = httpx.get(url, params=params, headers=headers, timeout=10).text
    assert text.startswith("id: 0\nevent: response.created\n")
    assert "event: response.completed" in text


# --- body read deadline --------------------------------------------------------------------------


def _send_partial_body(api_url: str, path: str) -> bytes:
    host, port = api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100\r\n\r\n".encode() + b'{"model": "turnstream-mock", '
        )
        received = b""
        while chunk := sock.recv(65536):  # ends when the server closes the connection
            received += chunk
    return received


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/conversations"])
def test_a_body_that_never_arrives_is_a_408_and_the_connection_is_closed(stack: Stack, path: str) -> None:
    # The test stack sets TURNSTREAM_BODY_READ_TIMEOUT_S=2.
    raw = _send_partial_body(stack.api_url, path)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), raw
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout"
    assert "2 seconds" in error["message"]


# --- readiness and the OpenAPI document ------------------------------------------------------------


def test_readyz_without_redis_is_a_503_in_openai_shape_without_the_address(stack: Stack) -> None:
    port, dead_port = free_port(), free_port()
    stack.spawn("api-no-redis-ready", "api", env={
        "TURNSTREAM_REDIS_URL": f"redis://127.0.0.1:{dead_port}/0", "TURNSTREAM_PORT": str(port)
    })
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, 30, "the API without Redis")
        r = httpx.get(f"{base}/readyz")
        error = openai_error(r, 503)
        assert error["code"] == "service_unavailable"
        assert r.headers["retry-after"] == "1"
        assert str(dead_port) not in r.text and "127.0.0.1" not in r.text
    finally:
        stack.stop("api-no-redis-ready")


def test_the_openapi_document_describes_the_create_response_body(stack: Stack) -> None:
    document = httpx.get(f"{stack.api_url}/openapi.json").json()
    body = document["paths"]["/v1/responses"]["post"]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert "input" in schema["required"]
    assert {"model", "input", "conversation", "previous_response_id", "stream", "store", "tools"} <= set(
        schema["properties"]
    )
