"""Claiming jobs into a leased running set: the queue holds only waiting jobs, whatever runs."""

from __future__ import annotations

import asyncio

import pytest
from arq.connections import ArqRedis

from shared import keys
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings
from worker.job_leases import JobLeases

SETTINGS = Settings()
QUEUE = SETTINGS.queue_name


@pytest.fixture
def redis() -> ArqRedis:
    return EmbeddedRedis().client(SETTINGS)


async def enqueue(redis: ArqRedis, *job_ids: str) -> None:
    for job_id in job_ids:
        assert await redis.enqueue_job("run_turn", job_id, _job_id=job_id, _queue_name=QUEUE) is not None


async def test_a_job_behind_300_running_ones_is_claimed_by_the_next_poll(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=15)
    await enqueue(redis, *(f"long-{i}" for i in range(300)))
    assert len(await leases.claim(300, "w1:")) == 300

    await enqueue(redis, "short")

    assert await redis.zcard(QUEUE) == 1  # running jobs are not in the polled queue
    claimed = await leases.claim(5, "w2:")
    assert [job_id for job_id, _, _ in claimed] == ["short"]
    assert await redis.zcard(keys.running_jobs(QUEUE)) == 301


async def test_claim_takes_at_most_the_free_slots_and_marks_each_in_progress(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=15)
    await enqueue(redis, "a", "b", "c")

    claimed = await leases.claim(2, "w1:")

    assert [(job_id, token) for job_id, _, token in claimed] == [("a", "w1:a"), ("b", "w1:b")]
    assert await redis.get(keys.arq_in_progress("a")) == b"w1:a"
    assert 0 < await redis.pttl(keys.arq_in_progress("a")) <= 15_000
    assert await leases.claim(0, "w1:") == []
    assert [m.decode() for m in await redis.zrange(QUEUE, 0, -1)] == ["c"]


async def test_a_lapsed_lease_goes_back_to_the_queue_for_the_next_claim(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=0.05)
    await enqueue(redis, "a")
    [(_, _, token)] = await leases.claim(1, "dead-worker:")

    await asyncio.sleep(0.1)  # the worker died: nobody renewed

    [(job_id, _, new_token)] = await leases.claim(1, "w2:")
    assert (job_id, new_token) == ("a", "w2:a")
    assert not await leases.renew("a", token)  # the dead claim cannot take it back


async def test_renewal_keeps_a_running_job_out_of_the_queue(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=0.2)
    await enqueue(redis, "a")
    [(_, _, token)] = await leases.claim(1, "w1:")

    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await leases.renew("a", token)

    assert await leases.claim(1, "w2:") == []


async def test_finish_releases_the_lease_and_keeps_arq_bookkeeping(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=15)
    await enqueue(redis, "a")
    [(_, _, token)] = await leases.claim(1, "w1:")

    await leases.finish("a", token, finished=True, result=b"done", result_ttl_ms=60_000)

    assert not await redis.exists(keys.arq_in_progress("a"), keys.arq_job("a"))
    assert await redis.get(keys.arq_result("a")) == b"done"
    assert await redis.zcard(keys.running_jobs(QUEUE)) == 0
    assert await redis.zcard(QUEUE) == 0


async def test_unfinished_job_goes_back_to_the_queue_at_its_score(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=15)
    await enqueue(redis, "a")
    [(_, _, token)] = await leases.claim(1, "w1:")

    await leases.finish("a", token, finished=False, requeue_score=12345)

    assert await redis.zscore(QUEUE, "a") == 12345
    assert await redis.exists(keys.arq_job("a"))  # arq runs it again with the same job
    assert await redis.zcard(keys.running_jobs(QUEUE)) == 0


async def test_a_stale_claim_cannot_release_a_newer_one(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=0.05)
    await enqueue(redis, "a")
    [(_, _, old)] = await leases.claim(1, "w1:")
    await asyncio.sleep(0.1)
    [(_, _, new)] = await leases.claim(1, "w2:")

    await leases.finish("a", old, finished=False, requeue_score=1)

    assert await redis.get(keys.arq_in_progress("a")) == new.encode()
    assert await redis.zscore(keys.running_jobs(QUEUE), "a") is not None
    assert await redis.zcard(QUEUE) == 0
