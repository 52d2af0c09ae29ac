"""At-least-once execution: a turn that runs twice commits once; a dead worker's turn is re-run quickly."""

from __future__ import annotations

import asyncio
import time

import redis
from arq.connections import ArqRedis, RedisSettings, create_pool
from openai import OpenAI

from shared import keys
from shared.queue import RUN_TURN
from shared.stored_form import decode_entries
from tests.conftest import Stack
from tests.integration.conftest import TERMINAL, assert_consecutive, validated, wait_for


def _entries(rds: redis.Redis, response_id: str) -> list[tuple[int, str, int]]:
    return [
        (e.seq, e.type, e.attempt)
        for _, fields in rds.xrange(keys.events(response_id))
        for e in decode_entries(fields)
    ]


async def _enqueue_duplicate(stack: Stack, response_id: str) -> None:
    pool: ArqRedis = await create_pool(RedisSettings(port=stack.redis.port), default_queue_name="turnstream:queue")
    try:
        # A second job for the same turn, as arq's at-least-once delivery can produce.
        job = await pool.enqueue_job(RUN_TURN, response_id, _job_id=f"dup-{response_id}")
        assert job is not None
        await pool.lpush(keys.QUEUE_WAKE, "1")
    finally:
        await pool.aclose()


def test_job_run_twice_commits_once(client: OpenAI, stack: Stack, rds: redis.Redis) -> None:
    conv = client.conversations.create()
    created = client.responses.create(
        model="turnstream-mock", input="count to 60 [delay=15ms]", conversation=conv.id, background=True
    )
    wait_for(client, created.id, {"in_progress"})
    asyncio.run(_enqueue_duplicate(stack, created.id))
    final = wait_for(client, created.id, TERMINAL, timeout=30)
    assert final.status == "completed"
    assert final.output_text == " ".join(str(i) for i in range(1, 61))
    items = client.conversations.items.list(conv.id, order="asc").data
    assert len(items) == 2  # the turn's input and answer, once
    entries = _entries(rds, created.id)
    assert_consecutive([seq for seq, _, _ in entries])
    assert sum(1 for _, kind, _ in entries if kind == "response.completed") == 1
    attempts = [attempt for _, _, attempt in entries]
    assert attempts == sorted(attempts)  # a re-run only ever follows the earlier attempt
    # The duplicate overlapped the first run (0.9 s of tokens, picked up in milliseconds): it took over,
    # the first attempt's writes were refused from then on, and a reader sees attempt 2 restart.
    reruns = [(kind, attempt) for _, kind, attempt in entries if kind == "response.in_progress"]
    assert reruns == [("response.in_progress", 1), ("response.in_progress", 2)]
    assert entries[-1][2] == 2


def test_job_run_again_after_completion_changes_nothing(client: OpenAI, stack: Stack, rds: redis.Redis) -> None:
    conv = client.conversations.create()
    done = client.responses.create(model="turnstream-mock", input="My name is Ravi.", conversation=conv.id)
    before = _entries(rds, done.id)
    asyncio.run(_enqueue_duplicate(stack, done.id))
    time.sleep(1.0)
    assert _entries(rds, done.id) == before
    assert len(client.conversations.items.list(conv.id).data) == 2


def test_dead_worker_turn_is_picked_up_again(client: OpenAI, stack: Stack, rds: redis.Redis) -> None:
    conv = client.conversations.create()
    created = client.responses.create(
        model="turnstream-mock", input="count to 300 [delay=10ms]", conversation=conv.id, background=True
    )
    wait_for(client, created.id, {"in_progress"})
    workers = stack.worker_pids()
    for name in workers:
        stack.stop(name, kill=True)  # SIGKILL: no chance to requeue or clean up
    killed_at = time.monotonic()
    for name in workers:
        stack.spawn(name, "worker")
    final = wait_for(client, created.id, TERMINAL, timeout=30)
    recovered_in = time.monotonic() - killed_at
    assert final.status == "completed"
    assert recovered_in < 30
    entries = _entries(rds, created.id)
    assert_consecutive([seq for seq, _, _ in entries])
    assert entries[-1][1:] == ("response.completed", 2)
    events = validated(client.responses.retrieve(created.id, stream=True))
    restart = [e for e in events if e.type == "response.in_progress"]
    assert len(restart) == 2
    assert len(client.conversations.items.list(conv.id).data) == 2
