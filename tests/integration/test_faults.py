"""Faults under load: Redis connections dropped, Redis restarted, workers killed (-9) or stopped (TERM).

Every scenario runs on its own redis-server (AOF on, fsync always, so a restart keeps what was written),
with turns running and a second turn queued behind each on the same conversation. Each asserts: every
turn completed, each conversation holds exactly its items in order with exactly the text the model said
(a re-run never repeats text), the workers that were not killed are still the same processes, and new
turns on those conversations complete.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from openai import OpenAI

from shared import keys
from shared.stored_form import decode_entries
from tests.conftest import Stack, start_redis, wait_until
from tests.integration.own_stack import own_stack

CONVERSATIONS = 6
FIRST = 120  # the running turn counts to this, 10 ms a token: ~1.2 s of streaming
SECOND = 15  # the turn queued behind it


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("faults")
    env = {
        "TURNSTREAM_REDIS_RETRY_MAX_S": "1",
        "TURNSTREAM_SWEEP_INTERVAL_S": "1",
        "TURNSTREAM_TEST_TOOL_LOG": str(root / "tool-calls.log"),
    }
    with own_stack(root, env, workers=2, aof=True) as stack:
        yield stack


@pytest.fixture
def client(fault_stack: Stack) -> Iterator[OpenAI]:
    # Retries ride over the seconds the API answers 503 while Redis is away.
    with OpenAI(base_url=fault_stack.base_url, api_key="test-key", max_retries=8, timeout=30) as c:
        yield c


def _rds(stack: Stack) -> redis.Redis:
    return redis.Redis(port=stack.redis.port)


def _numbers(n: int) -> str:
    return " ".join(str(i) for i in range(1, n + 1))


def _submit_load(client: OpenAI) -> list[tuple[str, str, str]]:
    """Per conversation: one turn streaming, one queued behind it. Returns (conversation, first, second)."""
    load = []
    for _ in range(CONVERSATIONS):
        conv = client.conversations.create().id
        first = client.responses.create(
            model="plain", input=f"count to {FIRST} [delay=10ms]", conversation=conv, background=True
        ).id
        second = client.responses.create(
            model="plain", input=f"count to {SECOND}", conversation=conv, background=True
        ).id
        load.append((conv, first, second))
    return load


def _wait_streaming(stack: Stack, load: list[tuple[str, str, str]], min_events: int = 15) -> None:
    r = _rds(stack)
    wait_until(lambda: all(r.xlen(keys.events(first)) >= min_events for _, first, _ in load), 20, "turns streaming")


def _statuses(stack: Stack, ids: list[str]) -> dict[str, str]:
    r = _rds(stack)
    return {i: (r.hget(keys.response(i), "status") or b"missing").decode() for i in ids}


def _wait_settled(stack: Stack, ids: list[str], timeout: float = 60) -> float:
    """Seconds until every turn is terminal."""
    started = time.monotonic()
    terminal = {"completed", "failed", "cancelled", "incomplete"}

    def settled() -> bool:
        return all(s in terminal for s in _statuses(stack, ids).values())

    try:
        wait_until(settled, timeout, "every turn to settle")
    except TimeoutError:
        raise AssertionError(f"not settled: {_statuses(stack, ids)}") from None
    return time.monotonic() - started


def _assert_exactly_once(client: OpenAI, stack: Stack, load: list[tuple[str, str, str]]) -> None:
    statuses = _statuses(stack, [i for _, first, second in load for i in (first, second)])
    assert set(statuses.values()) == {"completed"}, statuses
    r = _rds(stack)
    for conv, first, second in load:
        assert client.responses.retrieve(first).output_text == _numbers(FIRST)
        assert client.responses.retrieve(second).output_text == _numbers(SECOND)
        items = client.conversations.items.list(conv, order="asc", limit=100).data
        texts = [(i.role, i.content[0].text) for i in items]  # type: ignore[union-attr]
        assert texts == [
            ("user", f"count to {FIRST} [delay=10ms]"),
            ("assistant", _numbers(FIRST)),
            ("user", f"count to {SECOND}"),
            ("assistant", _numbers(SECOND)),
        ]
        # What an SSE client or gateway concatenates from the stream equals the answer: no text twice.
        streamed = [e.json() for _, f in r.xrange(keys.events(first)) for e in decode_entries(f)]
        deltas = "".join(e["delta"] for e in streamed if e["type"] == "response.output_text.delta")
        assert deltas == _numbers(FIRST)
        assert [e["sequence_number"] for e in streamed] == list(range(len(streamed)))
        assert r.llen(keys.conversation_turns(conv)) == 0


def _assert_new_turns_complete(client: OpenAI, load: list[tuple[str, str, str]]) -> None:
    for conv, _, _ in load:
        again = client.responses.create(model="plain", input="count to 3", conversation=conv)
        assert again.status == "completed" and again.output_text == "1 2 3"


def _alive(stack: Stack, names: list[str]) -> list[int]:
    return [stack.procs[n].pid for n in names if stack.procs[n].poll() is None]


def _ensure_workers(stack: Stack) -> None:
    for name in ("worker-1", "worker-2"):
        if name not in stack.procs or stack.procs[name].poll() is not None:
            stack.procs.pop(name, None)
            stack.spawn(name, "worker")


def test_connections_dropped_mid_load_lose_nothing(client: OpenAI, fault_stack: Stack) -> None:
    workers = _alive(fault_stack, ["worker-1", "worker-2"])
    load = _submit_load(client)
    _wait_streaming(fault_stack, load)
    r = _rds(fault_stack)
    for kind in ("normal", "pubsub"):
        r.execute_command("CLIENT", "KILL", "TYPE", kind)
    settled_in = _wait_settled(fault_stack, [i for _, a, b in load for i in (a, b)])
    print(f"\nCLIENT KILL: all {2 * CONVERSATIONS} turns settled {settled_in:.1f}s after the drop")
    _assert_exactly_once(client, fault_stack, load)
    assert _alive(fault_stack, ["worker-1", "worker-2"]) == workers
    _assert_new_turns_complete(client, load)


def test_redis_restart_mid_load_loses_nothing(client: OpenAI, fault_stack: Stack) -> None:
    workers = _alive(fault_stack, ["worker-1", "worker-2"])
    load = _submit_load(client)
    _wait_streaming(fault_stack, load)
    server = fault_stack.redis
    try:
        server.client().shutdown()  # AOF is fsynced on every write; SHUTDOWN also rewrites nothing away
    except redis.ConnectionError:
        pass
    server.proc.wait(timeout=10)
    time.sleep(2)  # workers and the API see Redis gone for a while
    fault_stack.redis = start_redis(server.workdir, server.port, aof=True)
    settled_in = _wait_settled(fault_stack, [i for _, a, b in load for i in (a, b)])
    print(f"\nRedis restart: all {2 * CONVERSATIONS} turns settled {settled_in:.1f}s after Redis was back")
    assert settled_in < 30
    _assert_exactly_once(client, fault_stack, load)
    assert _alive(fault_stack, ["worker-1", "worker-2"]) == workers
    _assert_new_turns_complete(client, load)


@pytest.mark.parametrize("how", ["kill", "term"])
def test_worker_stopped_mid_turn_loses_nothing(client: OpenAI, fault_stack: Stack, how: str) -> None:
    _ensure_workers(fault_stack)
    if how == "term":
        # A drain shorter than the turns: SIGTERM hands the running turns back to the queue.
        fault_stack.stop("worker-2")
        log = fault_stack.logdir / "worker-2.log"
        ready = log.read_bytes().count(b"worker ready")
        fault_stack.spawn("worker-2", "worker", env={"TURNSTREAM_SHUTDOWN_GRACE_S": "0.2"})
        wait_until(lambda: log.read_bytes().count(b"worker ready") > ready, 20, "worker-2")
    load = _submit_load(client)
    _wait_streaming(fault_stack, load)
    victim = fault_stack.procs["worker-2"]
    victim.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
    code = victim.wait(timeout=30)
    if how == "term":
        assert code == 0  # a clean, requested stop
    fault_stack.procs.pop("worker-2")
    _wait_settled(fault_stack, [i for _, a, b in load for i in (a, b)])
    _assert_exactly_once(client, fault_stack, load)
    _assert_new_turns_complete(client, load)
    fault_stack.spawn("worker-2", "worker")


def _stream_killing_workers(
    client: OpenAI, stack: Stack, prompt: str, kill_at: Callable[[Any, int], bool]
) -> tuple[list[Any], Any]:
    """Streams a turn and kill -9s every worker (whichever runs it) at the first event `kill_at` picks, given
    the event and how many came before it; new workers re-run the turn. Returns the events and the SDK's
    final snapshot."""
    events: list[Any] = []
    killed = False
    with client.responses.stream(model="turnstream-mock", input=prompt) as stream:
        for event in stream:
            events.append(event)
            if not killed and kill_at(event, len(events)):
                for name in ("worker-1", "worker-2"):
                    stack.stop(name, kill=True)
                killed = True
                _ensure_workers(stack)
        final = stream.get_final_response()
    assert killed, "the stream ended before the kill point"
    return events, final


def test_rerun_never_runs_a_streamed_tool_again(client: OpenAI, fault_stack: Stack) -> None:
    """A worker killed while the model answers from a tool's result: the re-run continues the answer in
    the same item, the tool ran once, and the SDK's stream snapshot ends equal to the stored Response."""
    _ensure_workers(fault_stack)
    log = Path(fault_stack.env["TURNSTREAM_TEST_TOOL_LOG"])
    log.write_text("")
    r = _rds(fault_stack)
    events, final = _stream_killing_workers(
        client,
        fault_stack,
        'call record_call({"words": 60}) [delay=25ms]',
        lambda event, seen: event.type == "response.output_text.delta" and seen > 12,
    )
    stored = client.responses.retrieve(final.id)
    assert stored.status == "completed"
    # The snapshot holds the SDK's parsed types (they add keys of their own); compare what a client reads.
    assert _shape(final.model_dump()["output"]) == _shape(stored.model_dump()["output"])
    answer = "Tool record_call returned: " + " ".join(["recorded"] * 60) + "."
    assert stored.output_text == answer
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == answer  # a client that concatenates every delta sees the answer once
    added = [e.output_index for e in events if e.type == "response.output_item.added"]
    assert added == list(range(len(stored.output)))  # no item opened twice
    assert len(log.read_text().split()) == 1  # the tool ran once
    attempts = {e.attempt for _, f in r.xrange(keys.events(final.id)) for e in decode_entries(f)}
    assert attempts >= {1, 2}  # it really was re-run


def test_rerun_of_a_turn_cut_while_reasoning_closes_that_reasoning_and_answers_once(
    client: OpenAI, fault_stack: Stack
) -> None:
    """A worker killed while the model reasons: the re-run closes the reasoning item with what clients were
    shown, reasons afresh in a new item, and answers once; every item's deltas add up to its final text."""
    _ensure_workers(fault_stack)
    events, final = _stream_killing_workers(
        client,
        fault_stack,
        "count to 30 [think] [delay=40ms]",
        lambda event, seen: event.type == "response.reasoning.delta",
    )
    stored = client.responses.retrieve(final.id)
    assert stored.status == "completed" and stored.output_text == _numbers(30)
    assert _shape(final.model_dump()["output"]) == _shape(stored.model_dump()["output"])
    # Killed at the first reasoning delta of a reasoning that takes ~10 delays: it was cut mid-way.
    assert [item.type for item in stored.output] == ["reasoning", "reasoning", "message"]
    cut, whole = ((item.content or [])[0].text for item in stored.output[:2])  # type: ignore[union-attr]
    assert whole.startswith(cut) and len(cut) < len(whole)
    added = [e.output_index for e in events if e.type == "response.output_item.added"]
    assert added == list(range(len(stored.output)))  # no item opened twice
    for index, item in enumerate(stored.output):
        kind = "response.output_text.delta" if item.type == "message" else "response.reasoning.delta"
        streamed = "".join(e.delta for e in events if e.type == kind and e.output_index == index)  # type: ignore[union-attr]
        assert streamed == (item.content or [])[0].text  # type: ignore[union-attr]


def _shape(output: list[dict[str, object]]) -> list[tuple[object, ...]]:
    fields = ("type", "id", "status", "call_id", "name", "arguments", "output")
    return [
        (*(item.get(f) for f in fields), [part.get("text") for part in item.get("content") or []])  # type: ignore[attr-defined]
        for item in output
    ]


def test_turns_whose_jobs_were_lost_are_swept_back(client: OpenAI, fault_stack: Stack) -> None:
    """Workers die and the queue loses the jobs too (a flushed queue, a job arq deleted): the sweeper
    finds the turns, running and queued ones alike, and they complete exactly once."""
    _ensure_workers(fault_stack)
    load = _submit_load(client)
    _wait_streaming(fault_stack, load)
    for name in ("worker-1", "worker-2"):
        fault_stack.stop(name, kill=True)
    r = _rds(fault_stack)
    for _, first, second in load:
        for turn in (first, second):
            r.delete(keys.arq_job(turn), keys.arq_in_progress(turn), keys.arq_retry(turn))
            queue = fault_stack.env.get("TURNSTREAM_QUEUE_NAME", "turnstream:queue")
            r.zrem(queue, turn)
            r.zrem(keys.running_jobs(queue), turn)
    _ensure_workers(fault_stack)
    settled_in = _wait_settled(fault_stack, [i for _, a, b in load for i in (a, b)], timeout=45)
    print(f"\nlost jobs: all {2 * CONVERSATIONS} turns settled {settled_in:.1f}s after the workers came back")
    _assert_exactly_once(client, fault_stack, load)
    assert r.zcard(keys.active_turns()) == 0


def test_worker_started_while_redis_is_down_waits_for_it(client: OpenAI, fault_stack: Stack) -> None:
    server = fault_stack.redis
    with contextlib.suppress(redis.ConnectionError):
        server.client().shutdown()
    server.proc.wait(timeout=10)
    fault_stack.spawn("worker-3", "worker")
    time.sleep(3)
    assert fault_stack.procs["worker-3"].poll() is None  # still waiting, not exited
    fault_stack.redis = start_redis(server.workdir, server.port, aof=True)
    for name in ("worker-1", "worker-2"):
        fault_stack.stop(name)  # only the late starter is left to serve
    try:
        fault_stack.wait_live_worker()  # the late starter's heartbeat, once it has reached Redis
        done = client.responses.create(model="plain", input="count to 5")
        assert done.status == "completed" and done.output_text == "1 2 3 4 5"
    finally:
        fault_stack.stop("worker-3")
        _ensure_workers(fault_stack)
