"""A turn's start and commit as its worker runs them: one script each, the job finished by the commit.

The turns here ask for a model no agent serves, so they fail at once without an upstream: what is under
test is the path around the agent, from the start script to the commit and the worker's job bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import func
from openai import AsyncOpenAI

from shared import events, ids, keys
from shared.models import Status, TurnRequest
from shared.queue import RUN_TURN, enqueue_turn
from shared.response_object import build_response
from shared.settings import Settings
from shared.stream_tail import read_after
from shared.turn_state import Retention, TurnState
from tests.queued_records import store_queued
from worker.agents import Agent, AgentRegistry
from worker.arq_worker import FastPickupWorker
from worker.cancel_listener import CancelListener
from worker.job_leases import JobLeases
from worker.redis_retry import Outage
from worker.service import run_turn
from worker.turn import TurnRunner

SETTINGS = Settings()
QUEUE = SETTINGS.queue_name


class RecordingLeases(JobLeases):
    """JobLeases that records every finish the worker sends."""

    def __init__(self, redis: ArqRedis) -> None:
        super().__init__(redis, QUEUE, lease_s=15)
        self.finished: list[str] = []

    async def finish(self, job_id: str, token: str, **kwargs: Any) -> None:
        self.finished.append(job_id)
        await super().finish(job_id, token, **kwargs)


class Worker:
    """A worker process's pieces, without its poll loop: the arq worker, its leases and the turn runner."""

    def __init__(self, redis: ArqRedis) -> None:
        outage = Outage(0.1)
        self.redis = redis
        self.arq = FastPickupWorker(
            functions=[func(run_turn, name=RUN_TURN)], queue_name=QUEUE, redis_pool=redis, outage=outage,
            handle_signals=False,
        )
        self.leases = self.arq.leases = RecordingLeases(redis)
        agents = AgentRegistry([Agent(name="served", model="served")])
        client = AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused")
        self.runner = TurnRunner(
            redis, SETTINGS, agents, client, CancelListener(redis, outage), outage, self.arq.claims
        )

    async def claim(self) -> tuple[str, str]:
        """Claims the next job as the poll loop does: (job id, token)."""
        [(job_id, score, token)] = await self.leases.claim(1, "w1:")
        self.arq.claims[job_id] = (token, score)
        await self.redis.set(keys.arq_retry(job_id), 1)  # arq's run counter, as its run_job leaves it
        return job_id, token

    async def finish_job(self, job_id: str) -> None:
        """arq's call once the job's function returned."""
        await self.arq.finish_job(job_id, True, None, 0, False, None, None)


@pytest.fixture
def redis(script_redis: ArqRedis) -> ArqRedis:
    return script_redis


async def accepted(redis: ArqRedis, *, progress: bool = True, conversation_id: str | None = None) -> TurnRequest:
    """A turn as the API accepts it: record, place in its conversation's queue and job; without `progress`
    (and the `conversation` field), as an older API node wrote it."""
    req = TurnRequest(
        response_id=ids.response_id(),
        model="no-such-agent",
        input=[{"type": "message", "role": "user", "content": "hi"}],
        conversation_id=conversation_id,
    )
    await store_queued(redis, req, current=progress)
    if conversation_id:
        await redis.rpush(keys.conversation_turns(conversation_id), req.response_id)
    assert await enqueue_turn(redis, QUEUE, req.response_id, req.conversation_id)
    return req


async def stream_types(redis: ArqRedis, response_id: str) -> list[str]:
    return [event.type for event in await read_after(redis, response_id, -1)]


async def test_a_committed_turn_leaves_its_worker_no_job_bookkeeping(redis: ArqRedis) -> None:
    worker = Worker(redis)
    req = await accepted(redis)
    job_id, token = await worker.claim()

    assert await worker.runner.run(req.response_id, req.conversation_id, job_id, token) == "failed"

    assert worker.arq.claims == {}
    assert not await redis.exists(keys.arq_in_progress(job_id), keys.arq_job(job_id), keys.arq_retry(job_id))
    assert await redis.zcard(keys.running_jobs(QUEUE)) == 0
    await worker.finish_job(job_id)
    assert worker.leases.finished == []  # nothing sent: the commit finished the job


async def test_a_refused_commit_leaves_the_job_to_its_workers_bookkeeping(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = Worker(redis)
    req = await accepted(redis)
    job_id, token = await worker.claim()
    state = worker.runner.state
    commit = state.finish

    async def taken_over_first(*args: Any, **kwargs: Any) -> bool:
        # A newer attempt owns the turn now.
        await TurnState(redis, state.retention).start(req.response_id, req.conversation_id)
        return await commit(*args, **kwargs)

    monkeypatch.setattr(state, "finish", taken_over_first)

    await worker.runner.run(req.response_id, req.conversation_id, job_id, token)

    assert job_id in worker.arq.claims
    assert await redis.get(keys.arq_in_progress(job_id)) == token.encode()
    await worker.finish_job(job_id)
    assert worker.leases.finished == [job_id]
    assert not await redis.exists(keys.arq_in_progress(job_id), keys.arq_job(job_id))
    assert await redis.zcard(keys.running_jobs(QUEUE)) == 0


@pytest.mark.parametrize("progress", [True, False], ids=["stored at accept", "older API node"])
async def test_in_progress_is_published_once_whoever_writes_it(redis: ArqRedis, progress: bool) -> None:
    worker = Worker(redis)
    req = await accepted(redis, progress=progress)
    job_id, token = await worker.claim()

    await worker.runner.run(req.response_id, req.conversation_id, job_id, token)

    assert await stream_types(redis, req.response_id) == [events.IN_PROGRESS, events.FAILED]


async def test_a_rerun_announces_itself_with_its_own_in_progress(redis: ArqRedis) -> None:
    worker = Worker(redis)
    req = await accepted(redis)
    # Attempt 1 died after its start.
    await TurnState(redis, worker.runner.state.retention).start(req.response_id, req.conversation_id)
    job_id, token = await worker.claim()

    await worker.runner.run(req.response_id, req.conversation_id, job_id, token)

    published = await read_after(redis, req.response_id, -1)
    assert [(e.type, e.attempt) for e in published] == [(events.IN_PROGRESS, 1), (events.IN_PROGRESS, 2),
                                                        (events.FAILED, 2)]


@pytest.mark.parametrize("progress", [True, False], ids=["current record", "older record"])
async def test_a_first_run_commits_its_whole_stream_as_one_compact_entry(redis: ArqRedis, progress: bool) -> None:
    worker = Worker(redis)
    req = await accepted(redis, progress=progress)
    await TurnState(redis, worker.runner.state.retention).append(
        req.response_id, 0, [events.lifecycle(events.CREATED, build_response(req, Status.QUEUED))]
    )
    job_id, token = await worker.claim()

    await worker.runner.run(req.response_id, req.conversation_id, job_id, token)

    assert await redis.xlen(keys.events(req.response_id)) == 1
    published = await read_after(redis, req.response_id, -1)
    assert [(e.seq, e.type, e.attempt) for e in published] == [
        (0, events.CREATED, 0), (1, events.IN_PROGRESS, 1), (2, events.FAILED, 1)
    ]


async def test_a_rerun_commits_what_every_attempt_wrote_as_one_compact_entry(redis: ArqRedis) -> None:
    worker = Worker(redis)
    req = await accepted(redis)
    state = TurnState(redis, worker.runner.state.retention)
    await state.start(req.response_id, req.conversation_id)  # attempt 1 wrote a delta, then died
    await state.append(req.response_id, 1, [events.text_delta(ids.message_id(), 0, "half")])
    job_id, token = await worker.claim()

    await worker.runner.run(req.response_id, req.conversation_id, job_id, token)

    assert await redis.xlen(keys.events(req.response_id)) == 1
    published = await read_after(redis, req.response_id, -1)
    assert [(e.seq, e.type, e.attempt) for e in published] == [
        (0, events.IN_PROGRESS, 1), (1, "response.output_text.delta", 1), (2, events.IN_PROGRESS, 2),
        (3, events.FAILED, 2),
    ]


async def test_with_compaction_off_a_turn_keeps_one_entry_per_event(redis: ArqRedis) -> None:
    worker = Worker(redis)
    worker.runner.state = TurnState(redis, Retention.from_settings(Settings(compact_finished_turns=False)))
    req = await accepted(redis)
    job_id, token = await worker.claim()

    await worker.runner.run(req.response_id, req.conversation_id, job_id, token)

    assert await redis.xlen(keys.events(req.response_id)) == 2
    assert await stream_types(redis, req.response_id) == [events.IN_PROGRESS, events.FAILED]


@pytest.mark.parametrize("progress", [True, False], ids=["current record", "older record"])
async def test_a_turn_behind_another_in_its_conversation_starts_only_once_that_one_finished(
    redis: ArqRedis, progress: bool
) -> None:
    worker = Worker(redis)
    conversation_id = ids.conversation_id()
    await redis.set(keys.conversation(conversation_id), json.dumps({"id": conversation_id}))
    state = worker.runner.state
    first = await accepted(redis, conversation_id=conversation_id, progress=progress)
    second = await accepted(redis, conversation_id=conversation_id, progress=progress)
    # Both jobs are claimed; enqueued in the same millisecond they may come back in either order.
    claimed = {job_id: (token, score) for job_id, score, token in await worker.leases.claim(2, "w1:")}
    assert set(claimed) == {first.response_id, second.response_id}
    second_job = second.response_id
    worker.arq.claims[second_job] = claimed[second_job]
    token = claimed[second_job][0]
    assert (await state.start(first.response_id, first.conversation_id)).attempt == 1  # running on another worker

    second_run = asyncio.create_task(worker.runner.run(second.response_id, second.conversation_id, second_job, token))
    await asyncio.sleep(0.3)

    assert not second_run.done()
    assert await redis.hmget(keys.response(second.response_id), ["status", "attempt"]) == [b"queued", b"0"]
    assert await stream_types(redis, second.response_id) == []

    assert await state.finish(
        first.response_id,
        expect=Status.IN_PROGRESS,
        attempt=1,
        final=Status.COMPLETED,
        response=build_response(first, Status.COMPLETED),
        conversation_id=conversation_id,
        items=[],
    )
    assert await asyncio.wait_for(second_run, timeout=5) == "failed"
    assert await stream_types(redis, second.response_id) == [events.IN_PROGRESS, events.FAILED]
    assert worker.arq.claims == {}
