"""Delta-only writes of many turns share one pipeline per tick; everything else is written at once."""

from __future__ import annotations

import asyncio
import json

import pytest
from arq.connections import ArqRedis

from shared import events, ids, keys
from shared.models import Status
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings
from shared.turn_state import Retention, StaleTurn, TurnState
from worker.append_batcher import AppendBatcher

SETTINGS = Settings()


class CountingState(TurnState):
    """A real TurnState that counts how its writes reach Redis."""

    def __init__(self, redis: ArqRedis) -> None:
        super().__init__(redis, Retention.from_settings(SETTINGS))
        self.single = 0
        self.pipelines: list[int] = []

    async def append(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.single += 1
        return await super().append(*args, **kwargs)

    async def append_many(self, writes):  # type: ignore[no-untyped-def]
        self.pipelines.append(len(writes))
        return await super().append_many(writes)


@pytest.fixture
def redis() -> ArqRedis:
    return EmbeddedRedis().client(SETTINGS)


async def started(redis: ArqRedis, state: TurnState) -> tuple[str, int]:
    response_id = ids.response_id()
    await redis.hset(
        keys.response(response_id),
        mapping={"status": Status.QUEUED.value, "attempt": 0, "seq": -1, "request": "{}", "response": "{}"},
    )
    return response_id, (await state.start(response_id, None)).attempt


async def test_deltas_of_many_turns_share_one_pipeline(redis: ArqRedis) -> None:
    state = CountingState(redis)
    batcher = AppendBatcher(state, tick_s=0.01)
    turns = [await started(redis, state) for _ in range(5)]
    for rid, attempt in turns:  # as a turn does: its in_progress is written at once
        await batcher.append(rid, attempt, [events.lifecycle(events.IN_PROGRESS, {"id": rid})], "1:0")
    assert state.single == 5

    results = await asyncio.gather(
        *(batcher.append(rid, attempt, [events.text_delta("msg_1", 0, f"t{i}")], "1:1")
          for i, (rid, attempt) in enumerate(turns))
    )

    assert results == [False] * 5
    assert state.pipelines == [5] and state.single == 5
    for i, (rid, _) in enumerate(turns):
        [_, (_, fields)] = await redis.xrange(keys.events(rid))
        assert json.loads(fields[b"data"])["delta"] == f"t{i}"


async def test_an_opening_or_lifecycle_write_goes_out_at_once(redis: ArqRedis) -> None:
    state = CountingState(redis)
    batcher = AppendBatcher(state, tick_s=10)  # a tick that never comes within this test
    rid, attempt = await started(redis, state)
    opening = [events.output_item_added(0, events.message_item("msg_1", "", "in_progress")),
               events.text_delta("msg_1", 0, "first")]

    await asyncio.wait_for(batcher.append(rid, attempt, opening, "1:1"), timeout=1)

    assert state.single == 1 and state.pipelines == []


async def test_a_refused_write_raises_for_its_own_writer_only(redis: ArqRedis) -> None:
    state = CountingState(redis)
    batcher = AppendBatcher(state, tick_s=0.01)
    rid, attempt = await started(redis, state)

    ok, stale = await asyncio.gather(
        batcher.append(rid, attempt, [events.text_delta("msg_1", 0, "x")], "1:1"),
        batcher.append(rid, attempt + 1, [events.text_delta("msg_1", 0, "zombie")], "2:1"),
        return_exceptions=True,
    )

    assert ok is False
    assert isinstance(stale, StaleTurn)
