"""The API's look at the workers' heartbeats before a create that waits for its turn: a live worker is
trusted for a while, none is never trusted, and creates arriving together share one read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq.connections import ArqRedis

from api import live_workers
from api.live_workers import LiveWorkers
from shared import fleet
from tests.unit.test_fleet import worker_beat


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every heartbeat read LiveWorkers makes, by queue."""
    made: list[str] = []
    real = fleet.live_workers

    async def counted(redis: Any, queue: str | None = None) -> list[fleet.WorkerBeat]:
        made.append(str(queue))
        return await real(redis, queue)

    monkeypatch.setattr(live_workers.fleet, "live_workers", counted)
    return made


async def test_a_live_worker_is_trusted_for_the_cache_interval_then_read_again(
    script_redis: ArqRedis, reads: list[str]
) -> None:
    clock = Clock()
    workers = LiveWorkers(script_redis, "q", cache_s=2.0, clock=clock)
    await fleet.beat(script_redis, worker_beat("a"), ttl_s=30)
    assert await workers.any_alive()
    await fleet.leave(script_redis, "a")
    clock.now += 1.9
    assert await workers.any_alive()  # trusted: no read
    assert reads == ["q"]
    clock.now += 0.2
    assert not await workers.any_alive()
    assert reads == ["q", "q"]


async def test_no_live_worker_is_never_trusted_so_a_new_worker_counts_at_once(
    script_redis: ArqRedis, reads: list[str]
) -> None:
    workers = LiveWorkers(script_redis, "q", cache_s=60.0, clock=Clock())
    assert not await workers.any_alive()
    assert not await workers.any_alive()
    await fleet.beat(script_redis, worker_beat("a"), ttl_s=30)
    assert await workers.any_alive()  # the same instant: the earlier answer was not kept
    assert reads == ["q", "q", "q"]


async def test_only_workers_of_the_api_s_queue_count(script_redis: ArqRedis) -> None:
    await fleet.beat(script_redis, worker_beat("a", queue="other"), ttl_s=30)
    assert not await LiveWorkers(script_redis, "q", cache_s=1.0).any_alive()


async def test_creates_arriving_together_share_one_read(script_redis: ArqRedis, reads: list[str]) -> None:
    await fleet.beat(script_redis, worker_beat("a"), ttl_s=30)
    workers = LiveWorkers(script_redis, "q", cache_s=1.0, clock=Clock())
    assert await asyncio.gather(*(workers.any_alive() for _ in range(20))) == [True] * 20
    assert reads == ["q"]
