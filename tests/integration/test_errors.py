"""Bad input gets a clear error in OpenAI's shape, naming the param; never a 500."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Stack, free_port, wait_until

M = "turnstream-mock"

BAD_CREATES: list[tuple[str, Any, int, str | None]] = [
    ("missing input", {"model": M}, 400, "input"),
    ("input wrong type", {"model": M, "input": 42}, 400, "input"),
    ("empty input", {"model": M, "input": ""}, 400, "input"),
    ("empty input list", {"model": M, "input": []}, 400, "input"),
    ("unknown parameter", {"model": M, "input": "hi", "frobnicate": True}, 400, "frobnicate"),
    ("bad role", {"model": M, "input": [{"role": "wizard", "content": "hi"}]}, 400, "input[0].role"),
    ("bad content", {"model": M, "input": [{"role": "user", "content": 7}]}, 400, "input[0].content"),
    ("unsupported item", {"model": M, "input": [{"type": "item_reference", "id": "x"}]}, 400, "input[0].type"),
    ("unknown model", {"model": "gpt-nope", "input": "hi"}, 400, "model"),
    ("temperature range", {"model": M, "input": "hi", "temperature": 3}, 400, "temperature"),
    ("max_output_tokens zero", {"model": M, "input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ("too much metadata", {"model": M, "input": "hi", "metadata": {str(i): "v" for i in range(17)}}, 400, "metadata"),
    ("metadata value too long", {"model": M, "input": "hi", "metadata": {"k": "v" * 513}}, 400, "metadata.k"),
    ("unsupported tool", {"model": M, "input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ("tool without name", {"model": M, "input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0].name"),
    (
        "conversation and previous_response_id",
        {"model": M, "input": "hi", "conversation": "conv_x", "previous_response_id": "resp_x"},
        400,
        "previous_response_id",
    ),
    ("background without store", {"model": M, "input": "hi", "background": True, "store": False}, 400, "background"),
    ("bad lock policy", {"model": M, "input": "hi", "conversation_lock": "sometimes"}, 400, "conversation_lock"),
    ("unknown conversation", {"model": M, "input": "hi", "conversation": "conv_missing"}, 404, "conversation"),
    ("unknown previous response", {"model": M, "input": "hi", "previous_response_id": "resp_missing"}, 400,
     "previous_response_id"),
]


def _assert_openai_error(r: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return dict(error)


@pytest.mark.parametrize(("name", "body", "status", "param"), BAD_CREATES, ids=[c[0] for c in BAD_CREATES])
def test_bad_create_gets_a_clear_error(stack: Stack, name: str, body: Any, status: int, param: str | None) -> None:
    r = httpx.post(f"{stack.base_url}/responses", json=body)
    _assert_openai_error(r, status, param)


def test_invalid_json_body_is_400(stack: Stack) -> None:
    r = httpx.post(f"{stack.base_url}/responses", content=b"{not json", headers={"content-type": "application/json"})
    _assert_openai_error(r, 400, None)


def test_non_object_body_is_400(stack: Stack) -> None:
    _assert_openai_error(httpx.post(f"{stack.base_url}/responses", json=[1, 2]), 400, None)


def test_oversized_input_is_413(stack: Stack) -> None:
    r = httpx.post(f"{stack.base_url}/responses", json={"model": M, "input": "x" * 70_000})  # limit is 65536 here
    error = _assert_openai_error(r, 413, None)
    assert "65536" in error["message"]


def test_oversized_chunked_body_is_413(stack: Stack) -> None:
    def chunks() -> Any:
        yield b'{"model": "turnstream-mock", "input": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    r = httpx.post(f"{stack.base_url}/responses", content=chunks(), headers={"content-type": "application/json"})
    _assert_openai_error(r, 413, None)


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/responses/resp_missing", None),
        ("/responses/resp_missing/input_items", None),
        ("/conversations/conv_missing", None),
        ("/conversations/conv_missing/items", None),
        ("/models/no-such-model", None),
    ],
)
def test_unknown_ids_are_404(stack: Stack, path: str, param: str | None) -> None:
    error = _assert_openai_error(httpx.get(f"{stack.base_url}{path}"), 404, param)
    assert error["code"] == "not_found"


def test_bad_query_parameters_are_400(stack: Stack, client: OpenAI) -> None:
    done = client.responses.create(model=M, input="hi")
    base = f"{stack.base_url}/responses/{done.id}"
    _assert_openai_error(httpx.get(base, params={"stream": "true", "starting_after": "-5"}), 400, "starting_after")
    _assert_openai_error(httpx.get(base, params={"stream": "true"}, headers={"Last-Event-ID": "abc"}), 400,
                         "Last-Event-ID")
    _assert_openai_error(httpx.get(f"{base}/input_items", params={"limit": "0"}), 400, "limit")
    _assert_openai_error(httpx.get(f"{base}/input_items", params={"after": "msg_nope"}), 400, "after")


def test_the_sdk_raises_typed_errors(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-nope", input="hi")
    assert info.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")


def test_unreachable_redis_is_503_with_retry_after(stack: Stack) -> None:
    port = free_port()
    dead = {"TURNSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "TURNSTREAM_PORT": str(port)}
    proc = stack.spawn("api-no-redis", "api", env=dead)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, 30, "the API without Redis")
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503
        r = httpx.post(f"{base}/v1/responses", json={"model": M, "input": "hi"}, timeout=10)
        error = _assert_openai_error(r, 503, None)
        assert error["code"] == "service_unavailable"
        assert r.headers["retry-after"] == "1"
    finally:
        stack.stop("api-no-redis")
    assert proc.returncode is not None
    subprocess.run(["true"], check=True)
