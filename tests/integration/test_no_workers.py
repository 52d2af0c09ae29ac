"""A stack with no worker: a create whose client waits for its turn is refused at once (503 `no_live_workers`,
storing nothing) instead of waiting in the queue; a background create is queued and runs when a worker comes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from websockets.sync.client import connect

from tests.conftest import Stack, free_port, wait_until
from tests.integration.conftest import wait_for
from tests.integration.own_stack import own_stack

M = "turnstream-mock"


@pytest.fixture(scope="module")
def workerless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """No worker, and a second API node that queues every create anyway (TURNSTREAM_REQUIRE_LIVE_WORKER=false)."""
    with own_stack(tmp_path_factory.mktemp("no-workers"), {}, workers=0) as stack:
        port = free_port()
        stack.spawn("api-queues-anyway", "api", env={"TURNSTREAM_PORT": str(port),
                                                    "TURNSTREAM_REQUIRE_LIVE_WORKER": "false"})
        stack.env["QUEUEING_API_URL"] = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz?exclude=workers").status_code == 200, 30,
                   "the second API")
        yield stack


@pytest.fixture
def client(workerless: Stack) -> Iterator[OpenAI]:
    # No retries: the SDK retries a 503 by itself, and here the answer itself is under test.
    with OpenAI(base_url=workerless.base_url, api_key="unused", max_retries=0, timeout=10) as c:
        yield c


def _sdk_error(create: Callable[[], Any]) -> httpx.Response:
    with pytest.raises(openai.APIStatusError) as raised:
        create()
    return raised.value.response


def _plain(stack: Stack, client: OpenAI) -> httpx.Response:
    return _sdk_error(lambda: client.responses.create(model=M, input="hi", extra_headers={"Idempotency-Key": "k1"}))


def _streamed(stack: Stack, client: OpenAI) -> httpx.Response:
    return _sdk_error(lambda: client.responses.create(model=M, input="hi", stream=True))


def _compact(stack: Stack, client: OpenAI) -> httpx.Response:
    return _sdk_error(lambda: client.responses.compact(model=M, input="hi"))


def _agui(stack: Stack, client: OpenAI) -> httpx.Response:
    body = {"threadId": f"t-{uuid.uuid4()}", "runId": "r1", "messages": [{"id": "m1", "role": "user", "content": "hi"}]}
    return httpx.post(f"{stack.base_url}/agui/{M}", json=body, timeout=10)


@pytest.mark.parametrize(
    "create", [_plain, _streamed, _compact, _agui], ids=["plain", "streamed", "compact", "agui-run"],
)
def test_a_create_that_would_wait_is_refused_at_once_and_stores_nothing(
    workerless: Stack, client: OpenAI, create: Callable[[Stack, OpenAI], httpx.Response]
) -> None:
    rds = workerless.redis.client()
    before = set(rds.keys("*"))
    answer = create(workerless, client)

    assert_no_live_workers(answer)
    assert set(rds.keys("*")) == before


def test_a_turn_in_a_conversation_is_refused_and_adds_nothing_to_it(workerless: Stack, client: OpenAI) -> None:
    conversation = client.conversations.create()
    rds = workerless.redis.client()
    before = set(rds.keys("*"))

    refused = _sdk_error(lambda: client.responses.create(model=M, input="hi", conversation=conversation.id))

    assert_no_live_workers(refused)
    assert set(rds.keys("*")) == before
    assert client.conversations.items.list(conversation.id).data == []


def assert_no_live_workers(answer: httpx.Response) -> None:
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) > 0
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("server_error", "no_live_workers")
    assert "`turnstream worker`" in error["message"] and "turnstream:queue" in error["message"]
    assert '"background": true' in error["message"]


def test_a_websocket_create_gets_the_error_event_in_its_place(workerless: Stack) -> None:
    rds = workerless.redis.client()
    before = set(rds.keys("*"))
    url = workerless.api_url.replace("http://", "ws://") + "/v1/responses"
    with connect(url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "response.create", "model": M, "input": "hi"}))
        message = json.loads(ws.recv(timeout=10))
    assert message["type"] == "error" and message["status"] == 503
    assert message["error"]["code"] == "no_live_workers" and "`turnstream worker`" in message["error"]["message"]
    assert set(rds.keys("*")) == before


def test_models_are_still_listed_with_no_worker(workerless: Stack, client: OpenAI) -> None:
    # What the fleet serves does not change while it is down; /readyz and the creates' 503 tell that it is.
    assert M in [m.id for m in client.models.list().data]
    assert httpx.get(f"{workerless.api_url}/readyz").json()["error"]["code"] == "no_live_workers"


def test_an_api_told_not_to_require_a_worker_queues_a_streamed_create(workerless: Stack) -> None:
    url = f"{workerless.env['QUEUEING_API_URL']}/v1/responses"
    with httpx.stream("POST", url, json={"model": M, "input": "count to 2", "stream": True}, timeout=10) as reply:
        assert reply.status_code == 200
        first = next(line for line in reply.iter_lines() if line.startswith("data: "))
    assert json.loads(first.removeprefix("data: "))["response"]["status"] == "queued"


def test_a_background_create_is_queued_and_runs_when_a_worker_comes(workerless: Stack, client: OpenAI) -> None:
    queued = client.responses.create(model=M, input="count to 3", background=True)
    assert queued.status == "queued"

    workerless.spawn("worker-1", "worker")
    wait_until(lambda: httpx.get(f"{workerless.api_url}/readyz").status_code == 200, 30, "the worker")
    assert wait_for(client, queued.id, {"completed"}, timeout=30).output_text == "1 2 3"
    # With the worker alive, a create that waits is served again.
    assert client.responses.create(model=M, input="count to 2").output_text == "1 2"
