"""A turn's start as its worker runs it: one script, which also waits its turn in the conversation.

The turns here ask for a model no agent serves, so they fail at once without an upstream: what is under
test is the path around the agent.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from arq.connections import ArqRedis
from openai import AsyncOpenAI

from shared import events, ids, keys
from shared.models import Status, TurnRequest
from shared.response_object import build_response
from shared.settings import Settings
from shared.stream_tail import read_after
from shared.turn_state import TurnState
from worker.agents import Agent, AgentRegistry
from worker.cancel_listener import CancelListener
from worker.redis_retry import Outage
from worker.turn import TurnRunner

SETTINGS = Settings()


def runner(redis: ArqRedis) -> TurnRunner:
    outage = Outage(0.1)
    agents = AgentRegistry([Agent(name="served", model="served")])
    client = AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused")
    return TurnRunner(redis, SETTINGS, agents, client, CancelListener(redis, outage), outage)


@pytest.fixture
def redis(script_redis: ArqRedis) -> ArqRedis:
    return script_redis


async def accepted(redis: ArqRedis, *, progress: bool = True, conversation_id: str | None = None) -> TurnRequest:
    """A turn's record as the API stores it (without `progress`, as an older API node does)."""
    req = TurnRequest(
        response_id=ids.response_id(),
        model="no-such-agent",
        input=[{"type": "message", "role": "user", "content": "hi"}],
        conversation_id=conversation_id,
    )
    record = {
        "status": Status.QUEUED.value,
        "attempt": 0,
        "seq": -1,
        "request": req.model_dump_json(),
        "response": json.dumps(build_response(req, Status.QUEUED)),
    }
    if progress:
        in_progress = events.lifecycle(events.IN_PROGRESS, build_response(req, Status.IN_PROGRESS))
        record["progress"] = events.encode(in_progress)
    await redis.hset(keys.response(req.response_id), mapping=record)
    return req


async def stream_types(redis: ArqRedis, response_id: str) -> list[str]:
    return [event.type for event in await read_after(redis, response_id, -1)]


@pytest.mark.parametrize("progress", [True, False], ids=["stored at accept", "older API node"])
async def test_in_progress_is_published_once_whoever_writes_it(redis: ArqRedis, progress: bool) -> None:
    req = await accepted(redis, progress=progress)

    await runner(redis).run(req.response_id)

    assert await stream_types(redis, req.response_id) == [events.IN_PROGRESS, events.FAILED]


async def test_a_rerun_announces_itself_with_its_own_in_progress(redis: ArqRedis) -> None:
    worker = runner(redis)
    req = await accepted(redis)
    await TurnState(redis, worker.state.retention).start(req.response_id)  # attempt 1 died after its start

    await worker.run(req.response_id)

    published = await read_after(redis, req.response_id, -1)
    assert [(e.type, e.attempt) for e in published] == [(events.IN_PROGRESS, 1), (events.IN_PROGRESS, 2),
                                                        (events.FAILED, 2)]


async def test_a_turn_behind_another_in_its_conversation_starts_only_once_that_one_finished(redis: ArqRedis) -> None:
    worker = runner(redis)
    conversation_id = ids.conversation_id()
    await redis.set(keys.conversation(conversation_id), json.dumps({"id": conversation_id}))
    state = worker.state
    first = await accepted(redis, conversation_id=conversation_id)
    second = await accepted(redis, conversation_id=conversation_id)
    for req in (first, second):
        assert await state.claim(conversation_id, req.response_id, "wait")
    assert (await state.start(first.response_id)).attempt == 1  # running on another worker

    second_run = asyncio.create_task(worker.run(second.response_id))
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
