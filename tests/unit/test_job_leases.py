"""Claiming jobs into a leased running set: the queue holds only waiting jobs, whatever runs."""

from __future__ import annotations

import asyncio

import pytest
from arq.connections import ArqRedis

from shared import events, keys
from shared.models import Status
from shared.queue import JobClaim
from shared.settings import Settings
from shared.stream_tail import read_after
from shared.turn_state import Retention, TurnState
from worker.job_leases import JobLeases

SETTINGS = Settings()
QUEUE = SETTINGS.queue_name


@pytest.fixture
def redis(script_redis: ArqRedis) -> ArqRedis:
    return script_redis


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
    await redis.set(keys.arq_retry("a"), 1)  # arq's run counter, as its run_job leaves it

    await leases.finish("a", token, finished=True)

    assert not await redis.exists(keys.arq_in_progress("a"), keys.arq_job("a"), keys.arq_retry("a"))
    assert not await redis.exists(keys.arq_result("a"))  # nothing reads arq's results: none is kept
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


# --- a turn's commit finishes its job ------------------------------------------------------------


async def running_turn(redis: ArqRedis, leases: JobLeases, response_id: str) -> tuple[TurnState, str]:
    """A turn whose job this worker claimed and started, as run_job leaves it: (its state, the claim token)."""
    await redis.hset(
        keys.response(response_id),
        mapping={"status": Status.QUEUED.value, "attempt": 0, "seq": -1, "request": "{}", "response": "{}"},
    )
    await enqueue(redis, response_id)
    [(_, _, token)] = await leases.claim(1, "w1:")
    await redis.set(keys.arq_retry(response_id), 1)
    state = TurnState(redis, Retention.from_settings(SETTINGS))
    assert (await state.start(response_id, None)).attempt == 1
    return state, token


async def commit(state: TurnState, response_id: str, attempt: int, token: str) -> bool:
    return await state.finish(
        response_id,
        expect=Status.IN_PROGRESS,
        attempt=attempt,
        final=Status.COMPLETED,
        response={"id": response_id, "status": "completed"},
        conversation_id=None,
        items=[],
        job=JobClaim(QUEUE, response_id, token),
    )


async def test_a_turns_commit_finishes_its_job_in_the_same_step(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=15)
    state, token = await running_turn(redis, leases, "resp_a")

    assert await commit(state, "resp_a", 1, token) is True

    assert not await redis.exists(keys.arq_in_progress("resp_a"), keys.arq_job("resp_a"), keys.arq_retry("resp_a"))
    assert await redis.zcard(keys.running_jobs(QUEUE)) == 0
    assert await redis.zcard(QUEUE) == 0
    assert await leases.claim(5, "w2:") == []


async def test_a_refused_commit_leaves_the_job_for_the_workers_own_bookkeeping(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=15)
    state, token = await running_turn(redis, leases, "resp_a")
    await state.start("resp_a", None)  # a newer attempt owns the turn

    assert await commit(state, "resp_a", 1, token) is False

    assert await redis.get(keys.arq_in_progress("resp_a")) == token.encode()
    assert await redis.zscore(keys.running_jobs(QUEUE), "resp_a") is not None
    assert await redis.exists(keys.arq_job("resp_a"), keys.arq_retry("resp_a")) == 2
    await leases.finish("resp_a", token, finished=True)
    assert not await redis.exists(keys.arq_in_progress("resp_a"), keys.arq_job("resp_a"))


async def test_a_commit_retried_after_a_lost_reply_changes_nothing_more(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=15)
    state, token = await running_turn(redis, leases, "resp_a")
    assert await commit(state, "resp_a", 1, token) is True

    assert await commit(state, "resp_a", 1, token) is False
    await leases.finish("resp_a", token, finished=True)  # the refused retry leaves the job to the worker

    assert [e.type for e in await read_after(redis, "resp_a", -1)] == [events.COMPLETED]
    assert await redis.zcard(keys.running_jobs(QUEUE)) == 0
    assert await redis.zcard(QUEUE) == 0


async def test_a_commit_under_a_lapsed_lease_leaves_the_newer_claim_its_lease(redis: ArqRedis) -> None:
    leases = JobLeases(redis, QUEUE, lease_s=0.05)
    state, old = await running_turn(redis, leases, "resp_a")
    await asyncio.sleep(0.1)
    [(_, _, new)] = await leases.claim(1, "w2:")  # claimed, but not started yet

    assert await commit(state, "resp_a", 1, old) is True

    # The newer claim finds the job gone (arq calls it expired) and releases its own lease.
    assert not await redis.exists(keys.arq_job("resp_a"))
    assert await redis.get(keys.arq_in_progress("resp_a")) == new.encode()
    assert await redis.zscore(keys.running_jobs(QUEUE), "resp_a") is not None
