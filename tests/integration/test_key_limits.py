"""Per-key limits hold across two API processes, slots come back on every way a turn can end, and tokens
are counted per project and day."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import openai
import pytest

from shared import ids, keys
from shared.api_keys import digest
from tests.integration.conftest import TERMINAL, wait_for
from tests.integration.keyed_stack import KeyedStack, M, http

SLOW = "count to 100 [delay=30ms]"  # 3 s
RESET = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+(\.\d+)?s)$")


def test_requests_per_minute_are_one_budget_across_api_nodes(keyed: KeyedStack) -> None:
    _, secret = keyed.key("rpm", rpm=10)
    nodes = [http(url, secret) for url in keyed.api_urls]
    answers = [nodes[i % 2].get("/v1/models") for i in range(12)]
    assert [r.status_code for r in answers] == [200] * 10 + [429] * 2
    assert [int(r.headers["x-ratelimit-remaining-requests"]) for r in answers] == [*range(9, -1, -1), 0, 0]
    assert {r.headers["x-ratelimit-limit-requests"] for r in answers} == {"10"}
    limited = answers[-1]
    assert RESET.match(limited.headers["x-ratelimit-reset-requests"])
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"] == {
        "message": limited.json()["error"]["message"],
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert "limit 10" in limited.json()["error"]["message"]
    with keyed.client(secret, node=1) as client, pytest.raises(openai.RateLimitError):
        client.responses.create(model=M, input="hi")
    for n in nodes:
        n.close()


def test_rate_limit_headers_come_with_every_answer_streams_included(keyed: KeyedStack) -> None:
    _, secret = keyed.key("headers", rpm=50)
    with http(keyed.api_urls[0], secret) as client:
        with client.stream("POST", "/v1/responses", json={"model": M, "input": "hi", "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-ratelimit-limit-requests"] == "50"
            assert r.headers["x-ratelimit-remaining-requests"] == "49"
            assert r.headers["x-ratelimit-reset-requests"] == "1m0s"
            r.read()
        missing = client.get(f"/v1/responses/{ids.response_id()}")
    assert missing.status_code == 404
    assert missing.headers["x-ratelimit-remaining-requests"] == "48"


def test_concurrent_turns_are_one_budget_across_api_nodes(keyed: KeyedStack) -> None:
    _, secret = keyed.key("concurrency", max_concurrent=2)
    a, b = keyed.client(secret, node=0), keyed.client(secret, node=1)
    first = a.responses.create(model=M, input=SLOW, background=True)
    second = b.responses.create(model=M, input=SLOW, background=True)
    for client in (a, b):
        with pytest.raises(openai.RateLimitError) as caught:
            client.responses.create(model=M, input="hi", background=True)
        assert caught.value.code == "concurrency_limit_exceeded"
        assert caught.value.response.headers["retry-after"] == "1"
    a.responses.cancel(first.id)
    third = b.responses.create(model=M, input=SLOW, background=True)
    for response_id in (second.id, third.id):
        a.responses.cancel(response_id)
    _assert_no_slot_held(keyed, secret)
    a.close()
    b.close()


def test_a_slot_comes_back_when_a_turn_completes_fails_or_is_cancelled_while_queued(keyed: KeyedStack) -> None:
    _, secret = keyed.key("release", max_concurrent=2)
    with keyed.client(secret) as client:
        assert client.responses.create(model=M, input="hi").status == "completed"
        assert client.responses.create(model=M, input="[fail]").status == "failed"
        _assert_no_slot_held(keyed, secret)
        # A second turn on a busy conversation waits, queued, behind the first: cancelled there by the API.
        conv = client.conversations.create()
        running = client.responses.create(model=M, input=SLOW, conversation=conv.id, background=True)
        queued = client.responses.create(model=M, input="hi", conversation=conv.id, background=True)
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model=M, input="hi", background=True)
        assert client.responses.cancel(queued.id).status == "cancelled"
        assert client.responses.retrieve(running.id).status == "in_progress"
        extra = client.responses.create(model=M, input="hi", background=True)
        wait_for(client, extra.id, TERMINAL)
        client.responses.cancel(running.id)
    _assert_no_slot_held(keyed, secret)


def test_a_killed_worker_keeps_the_slot_until_the_rerun_ends_the_turn(keyed: KeyedStack) -> None:
    _, secret = keyed.key("worker-death", max_concurrent=1)
    with keyed.client(secret) as client:
        turn = client.responses.create(model=M, input=SLOW, background=True)
        wait_for(client, turn.id, {"in_progress"})
        keyed.kill_worker()
        # Still in flight (it will be re-run), so it still counts.
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model=M, input="hi", background=True)
        keyed.spawn_worker()
        final = wait_for(client, turn.id, TERMINAL, timeout=45)
        assert final.status == "completed"
        with keyed.redis() as r:
            assert r.hget(keys.response(turn.id), "attempt") == b"2"
        after = client.responses.create(model=M, input="hi")
    assert after.status == "completed"
    _assert_no_slot_held(keyed, secret)


def test_admission_repairs_slots_whose_turn_ended_or_vanished(keyed: KeyedStack) -> None:
    key, secret = keyed.key("repair", max_concurrent=2)
    with keyed.client(secret) as client:
        done = client.responses.create(model=M, input="hi")
    stale_ms = int(time.time() * 1000) - 120_000
    with keyed.redis() as r:
        # As if releases were lost: one slot of a finished turn, one of a create that died before storing.
        r.zadd(keys.api_key_inflight(key.id), {done.id: stale_ms, ids.response_id(): stale_ms})
        assert r.zcard(keys.api_key_inflight(key.id)) == 2
    with keyed.client(secret) as client:
        assert client.responses.create(model=M, input="hi").status == "completed"
    _assert_no_slot_held(keyed, secret)


def test_token_usage_is_counted_once_per_turn_for_its_project_and_day(keyed: KeyedStack) -> None:
    secret = keyed.cli_key("usage")
    with keyed.client(secret) as client:
        turns = [client.responses.create(model=M, input=text) for text in ("My name is Ravi.", "count to 20")]
    used_in = sum(t.usage.input_tokens for t in turns if t.usage)
    used_out = sum(t.usage.output_tokens for t in turns if t.usage)
    assert used_in > 0 and used_out > 0
    today = datetime.now(UTC).date().isoformat()
    listed = keyed.cli("keys", "list")
    assert listed.returncode == 0, listed.stderr
    usage_rows = [line.split() for line in listed.stdout.splitlines() if line.startswith("usage ")]
    assert usage_rows == [["usage", today, "2", str(used_in), str(used_out)]]


def _assert_no_slot_held(keyed: KeyedStack, secret: str) -> None:
    key = next(k for k in keyed.listed() if k.digest and digest(secret) == k.digest)
    with keyed.redis() as r:
        assert r.zcard(keys.api_key_inflight(key.id)) == 0
