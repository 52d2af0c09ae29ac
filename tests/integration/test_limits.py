"""Every limit has a number and a test: output bytes, output tokens, queue depth, upstream failure, retention."""

from __future__ import annotations

import threading
import time

import httpx
import redis
from openai import OpenAI

from shared import keys
from tests.conftest import Stack, free_port, wait_until
from tests.integration.conftest import validated

M = "turnstream-mock"


def test_output_byte_ceiling_ends_the_turn_incomplete(client: OpenAI) -> None:
    # The test stack sets TURNSTREAM_MAX_OUTPUT_BYTES=20000; counting to 5000 is ~24 kB.
    response = client.responses.create(model=M, input="count to 5000")
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    text = response.output[0].content[0].text  # type: ignore[union-attr]
    assert 20000 < len(text.encode()) < 21000


def test_max_output_tokens_ends_the_turn_incomplete(client: OpenAI) -> None:
    response = client.responses.create(model=M, input="count to 100", max_output_tokens=10)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 10


def test_upstream_failure_fails_the_turn_and_leaves_the_conversation_unchanged(client: OpenAI) -> None:
    conv = client.conversations.create()
    client.responses.create(model=M, input="My name is Ravi.", conversation=conv.id)
    events = validated(client.responses.create(model=M, input="[fail]", conversation=conv.id, stream=True))
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.error is not None and "500" in failed.response.error.message
    assert len(client.conversations.items.list(conv.id).data) == 2
    after = client.responses.create(model=M, input="What is my name?", conversation=conv.id)
    assert after.output_text == "Your name is Ravi."


def test_broken_upstream_stream_fails_the_turn(client: OpenAI) -> None:
    response = client.responses.create(model=M, input="count to 50 [fail-midstream]")
    assert response.status == "failed"
    assert response.error is not None and response.error.code == "server_error"
    assert "the upstream stream broke off" in response.error.message


def test_full_queue_answers_503_with_retry_after(stack: Stack) -> None:
    port = free_port()
    stack.spawn("api-full", "api", env={"TURNSTREAM_PORT": str(port), "TURNSTREAM_MAX_QUEUE_DEPTH": "0"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "the API")
        r = httpx.post(f"{base}/v1/responses", json={"model": M, "input": "hi"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "queue_full"
        assert r.headers["retry-after"] == "5"
    finally:
        stack.stop("api-full")


def test_retention_ttls_are_set(client: OpenAI, rds: redis.Redis) -> None:
    conv = client.conversations.create()
    stored = client.responses.create(model=M, input="hi", conversation=conv.id)
    unstored = client.responses.create(model=M, input="hi", store=False)
    assert 29 * 86400 < rds.ttl(keys.response(stored.id)) <= 30 * 86400
    assert 0 < rds.ttl(keys.response(unstored.id)) <= 3600
    assert 0 < rds.ttl(keys.events(stored.id)) <= 86400
    assert 29 * 86400 < rds.ttl(keys.conversation(conv.id)) <= 30 * 86400
    assert 29 * 86400 < rds.ttl(keys.conversation_items(conv.id)) <= 30 * 86400


def test_sse_sends_keepalive_comments_while_a_tool_runs(stack: Stack) -> None:
    # The test stack sets TURNSTREAM_SSE_KEEPALIVE_S=1; the tool is silent for 2.5 s.
    body = {"model": M, "input": 'call slow_tool({"seconds": 2.5})', "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/responses", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        lines = list(r.iter_lines())
    assert any(line.startswith(":") for line in lines)
    assert "event: response.completed" in lines


def test_one_blocking_redis_read_serves_many_sse_clients(client: OpenAI, stack: Stack, rds: redis.Redis) -> None:
    baseline = int(rds.info("clients")["blocked_clients"])
    created = [
        client.responses.create(model=M, input=f"count to 100 [delay=20ms] {i}", background=True) for i in range(30)
    ]
    done: list[int] = []
    peak = {"blocked": 0}

    def follow(response_id: str) -> None:
        done.append(sum(1 for e in client.responses.retrieve(response_id, stream=True) if e.type.endswith("delta")))

    threads = [threading.Thread(target=follow, args=(r.id,)) for r in created]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        peak["blocked"] = max(peak["blocked"], int(rds.info("clients")["blocked_clients"]))
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=60)
    assert len(done) == 30
    # 30 live SSE clients; the API holds one blocking read for all of them (workers hold their own BLPOPs).
    assert peak["blocked"] <= baseline + 2
