"""Worker heartbeats: a live record is listed, an expired or removed one is not, and its id is pruned."""

from __future__ import annotations

import time

import pytest
from arq.connections import ArqRedis
from pydantic import ValidationError

from shared import fleet, keys
from shared.settings import Settings


def worker_beat(worker_id: str, queue: str = "q", running: int = 0) -> fleet.WorkerBeat:
    now = time.time()
    return fleet.WorkerBeat(
        id=worker_id, host="h", pid=1, queue=queue, running=running, max_jobs=50, started_at=now, beat_at=now
    )


async def test_live_workers_lists_beating_workers_of_the_queue(script_redis: ArqRedis) -> None:
    await fleet.beat(script_redis, worker_beat("a", running=2), ttl_s=30)
    await fleet.beat(script_redis, worker_beat("b", queue="other"), ttl_s=30)
    assert [(w.id, w.running) for w in await fleet.live_workers(script_redis, "q")] == [("a", 2)]
    assert {w.id for w in await fleet.live_workers(script_redis)} == {"a", "b"}


async def test_an_expired_heartbeat_drops_the_worker_and_its_id(script_redis: ArqRedis) -> None:
    await fleet.beat(script_redis, worker_beat("a"), ttl_s=30)
    await script_redis.delete(keys.worker("a"))  # as Redis expires it
    assert await fleet.live_workers(script_redis, "q") == []
    assert await script_redis.zrange(keys.WORKERS, 0, -1) == []


async def test_a_worker_that_leaves_is_gone_at_once(script_redis: ArqRedis) -> None:
    await fleet.beat(script_redis, worker_beat("a"), ttl_s=30)
    await fleet.leave(script_redis, "a")
    assert await fleet.live_workers(script_redis) == []
    assert await script_redis.exists(keys.worker("a")) == 0


def test_a_heartbeat_ttl_shorter_than_the_beat_is_refused_naming_both_settings() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(worker_heartbeat_s=20, worker_heartbeat_ttl_s=15)
    (error,) = info.value.errors()
    assert error["loc"] == ("worker_heartbeat_ttl_s",) and "TURNSTREAM_WORKER_HEARTBEAT_S" in error["msg"]
