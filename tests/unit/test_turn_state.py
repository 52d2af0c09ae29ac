from __future__ import annotations

import json
from typing import Any

import pytest
from arq.connections import ArqRedis

from shared import events, ids, keys
from shared.events import StreamEvent, decode_entry
from shared.models import Status, TurnRequest
from shared.redis_conn import EmbeddedRedis
from shared.response_object import build_response
from shared.settings import Settings
from shared.turn_state import Retention, StaleTurn, TurnState
from tests import queued_records
from tests.queued_records import in_progress_json

RETENTION = Retention(stream_ttl_s=600, response_ttl_s=7200, conversation_ttl_s=3600, stream_maxlen=20_000)


@pytest.fixture
def redis(script_redis: ArqRedis) -> ArqRedis:
    return script_redis


@pytest.fixture
def state(redis: ArqRedis) -> TurnState:
    return TurnState(redis, RETENTION)


async def store_queued(
    redis: ArqRedis,
    conversation_id: str | None = None,
    *,
    progress: bool = False,
    metadata: dict[str, str] | None = None,
) -> TurnRequest:
    """The record as the API stores it before enqueueing; without `progress` (the in_progress event encoded
    at accept) as an older API node stores it."""
    req = TurnRequest(
        response_id=ids.response_id(),
        model="test-model",
        input=[{"id": ids.message_id(), "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": "hi"}]}],
        conversation_id=conversation_id,
        metadata=metadata or {},
    )
    await queued_records.store_queued(redis, req, current=progress)
    return req


async def queue_turn(redis: ArqRedis, conversation_id: str, response_id: str) -> None:
    """The turn joins its conversation's queue, as its accept puts it there (shared/turn_accept.py)."""
    await redis.rpush(keys.conversation_turns(conversation_id), response_id)


async def create_conversation(redis: ArqRedis) -> str:
    conversation_id = ids.conversation_id()
    await redis.set(keys.conversation(conversation_id), json.dumps({"id": conversation_id}), ex=60)
    return conversation_id


async def stream(redis: ArqRedis, response_id: str) -> list[tuple[str, StreamEvent]]:
    entries = await redis.xrange(keys.events(response_id))
    return [(entry_id.decode(), decode_entry(fields)) for entry_id, fields in entries]


async def status_of(redis: ArqRedis, response_id: str) -> str:
    return (await redis.hget(keys.response(response_id), "status")).decode()


async def stored_items(redis: ArqRedis, conversation_id: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await redis.lrange(keys.conversation_items(conversation_id), 0, -1)]


def delta(text: str) -> events.Event:
    return events.text_delta("msg_1", 0, text)


async def finish(
    state: TurnState,
    req: TurnRequest,
    *,
    attempt: int | None,
    expect: Status = Status.IN_PROGRESS,
    final: Status = Status.COMPLETED,
    items: list[dict[str, Any]] | None = None,
    pending: list[events.Event] | None = None,
) -> bool:
    return await state.finish(
        req.response_id,
        expect=expect,
        attempt=attempt,
        final=final,
        response=build_response(req, final),
        conversation_id=req.conversation_id,
        items=items or [],
        pending=pending or [],
    )


# --- append -------------------------------------------------------------------------------------


async def test_sequence_numbers_start_at_zero_and_increase_by_one_across_appends(
    redis: ArqRedis, state: TurnState
) -> None:
    req = await store_queued(redis)
    await state.append(req.response_id, 0, [delta("a")])
    await state.append(req.response_id, 0, [delta("b"), delta("c"), delta("d")])
    await state.append(req.response_id, 0, [delta("e"), delta("f")])

    entries = await stream(redis, req.response_id)
    assert [event.seq for _, event in entries] == [0, 1, 2, 3, 4, 5]
    assert [entry_id for entry_id, _ in entries] == [f"{seq}-1" for seq in range(6)]
    assert [event.json()["sequence_number"] for _, event in entries] == list(range(6))
    assert "".join(event.json()["delta"] for _, event in entries) == "abcdef"
    assert int(await redis.hget(keys.response(req.response_id), "seq")) == 5


async def test_entry_data_is_the_event_json_with_sequence_number_added(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    event = events.output_item_added(0, events.message_item("msg_1", "", "in_progress"))
    await state.append(req.response_id, 0, [delta("x"), event])

    (_, first), (_, second) = await stream(redis, req.response_id)
    assert second.type == "response.output_item.added"
    assert second.attempt == 0
    assert second.json() == {"sequence_number": 1, **event}
    assert first.json() == {"sequence_number": 0, **delta("x")}


async def test_append_records_the_writing_attempt_on_each_entry(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.append(req.response_id, 0, [events.lifecycle(events.CREATED, {"id": req.response_id})])
    started = await state.start(req.response_id, req.conversation_id)
    await state.append(req.response_id, started.attempt, [delta("x")])

    assert [event.attempt for _, event in await stream(redis, req.response_id)] == [0, 1]


async def test_append_with_stale_attempt_is_refused_and_writes_nothing(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)
    await state.append(req.response_id, 1, [delta("from attempt 1")])
    await state.start(req.response_id, req.conversation_id)

    with pytest.raises(StaleTurn) as raised:
        await state.append(req.response_id, 1, [delta("zombie")])

    assert raised.value.code == -2
    assert [event.json()["delta"] for _, event in await stream(redis, req.response_id)] == ["from attempt 1"]
    assert int(await redis.hget(keys.response(req.response_id), "seq")) == 0


async def test_append_after_finish_is_refused_as_finished(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)
    assert await finish(state, req, attempt=1)

    with pytest.raises(StaleTurn) as raised:
        await state.append(req.response_id, 1, [delta("late")])

    assert raised.value.code == -3
    assert (await stream(redis, req.response_id))[-1][1].type == events.COMPLETED


async def test_append_to_deleted_response_is_refused_as_missing(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)
    await redis.delete(keys.response(req.response_id), keys.events(req.response_id))

    with pytest.raises(StaleTurn) as raised:
        await state.append(req.response_id, 1, [delta("x")])

    assert raised.value.code == -1
    assert await redis.exists(keys.events(req.response_id)) == 0


async def test_append_reports_whether_cancel_was_requested(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)
    assert await state.append(req.response_id, 1, [delta("a")]) is False

    await redis.hset(keys.response(req.response_id), "cancel", "1")

    assert await state.append(req.response_id, 1, [delta("b")]) is True


async def test_stream_is_capped_near_maxlen_and_given_a_ttl(redis: ArqRedis) -> None:
    retention = Retention(stream_ttl_s=90, response_ttl_s=7200, conversation_ttl_s=3600, stream_maxlen=10)
    state = TurnState(redis, retention)
    req = await store_queued(redis)
    for i in range(300):
        await state.append(req.response_id, 0, [delta(str(i))])

    length = await redis.xlen(keys.events(req.response_id))
    # "~" trims whole radix nodes (100 entries by default), so the cap is approximate.
    assert 10 <= length <= 10 + 100
    assert 0 < await redis.ttl(keys.events(req.response_id)) <= 90
    newest = await redis.xrevrange(keys.events(req.response_id), count=1)
    assert newest[0][0] == b"299-1"


async def test_append_of_empty_batch_writes_nothing_and_does_not_raise(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)

    assert await state.append(req.response_id, 0, []) is False
    assert await redis.xlen(keys.events(req.response_id)) == 0
    assert int(await redis.hget(keys.response(req.response_id), "seq")) == -1


# --- start --------------------------------------------------------------------------------------


async def test_start_moves_queued_turn_to_in_progress_as_attempt_one(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)

    started = await state.start(req.response_id, req.conversation_id)

    assert started.status_before == "queued"
    assert started.attempt == 1
    assert started.cancel_requested is False
    assert await status_of(redis, req.response_id) == "in_progress"
    assert int(await redis.hget(keys.response(req.response_id), "attempt")) == 1


async def test_second_start_is_a_rerun_with_attempt_two(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)

    rerun = await state.start(req.response_id, req.conversation_id)

    assert rerun.status_before == "in_progress"
    assert rerun.attempt == 2
    assert await status_of(redis, req.response_id) == "in_progress"


async def test_a_pickup_after_a_wait_on_the_queue_continues_the_turn_and_is_not_a_try(
    redis: ArqRedis, state: TurnState
) -> None:
    req = await store_queued(redis)
    first = await state.start(req.response_id, req.conversation_id)
    assert (first.continues, first.waits, first.tries) == (False, 0, 1)

    assert await state.defer(req.response_id, 1)
    after_wait = await state.start(req.response_id, req.conversation_id)
    assert (after_wait.attempt, after_wait.continues, after_wait.waits, after_wait.tries) == (2, True, 1, 1)

    # The mark is taken by that start: the pickup after a worker death that follows counts as a try.
    after_death = await state.start(req.response_id, req.conversation_id)
    assert (after_death.attempt, after_death.continues, after_death.waits, after_death.tries) == (3, False, 1, 2)
    assert await redis.hget(keys.response(req.response_id), "deferred") is None


async def test_a_wait_marked_by_a_stale_attempt_or_after_the_end_counts_for_nothing(
    redis: ArqRedis, state: TurnState
) -> None:
    req = await store_queued(redis)
    assert not await state.defer(req.response_id, 1)  # still queued: no attempt owns it
    await state.start(req.response_id, req.conversation_id)
    await state.start(req.response_id, req.conversation_id)

    assert not await state.defer(req.response_id, 1)  # attempt 2 owns the turn now
    rerun = await state.start(req.response_id, req.conversation_id)
    assert (rerun.continues, rerun.tries) == (False, 3)

    await finish(state, req, attempt=3)
    assert not await state.defer(req.response_id, 3)
    assert not await state.defer("resp_gone", 1)
    assert not await redis.exists(keys.response("resp_gone"))  # a deleted record is not recreated


async def test_start_of_finished_turn_changes_nothing(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)
    await finish(state, req, attempt=1)

    again = await state.start(req.response_id, req.conversation_id)

    assert again.status_before == "completed"
    assert again.attempt == 1
    assert await status_of(redis, req.response_id) == "completed"


async def test_start_of_missing_response_reports_missing(state: TurnState) -> None:
    started = await state.start("resp_gone", None)

    assert started.status_before == "missing"
    assert started.attempt == 0


async def test_start_reports_a_cancel_requested_while_queued(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await redis.hset(keys.response(req.response_id), "cancel", "1")

    started = await state.start(req.response_id, req.conversation_id)

    assert started.cancel_requested is True


async def test_first_start_publishes_the_in_progress_event_stored_at_accept(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis, progress=True)
    await state.append(req.response_id, 0, [events.lifecycle(events.CREATED, {"id": req.response_id})])

    started = await state.start(req.response_id, req.conversation_id)

    assert (started.attempt, started.announced, started.waiting) == (1, True, False)
    assert started.request == req.model_dump_json()
    (_, _), (entry_id, in_progress) = await stream(redis, req.response_id)
    assert (entry_id, in_progress.type, in_progress.attempt) == ("1-1", events.IN_PROGRESS, 1)
    assert in_progress.json() == {"sequence_number": 1, **json.loads(in_progress_json(req))}
    assert 0 < await redis.ttl(keys.events(req.response_id)) <= RETENTION.stream_ttl_s
    assert await redis.hexists(keys.response(req.response_id), "progress") == 0  # used once, not kept


async def test_a_rerun_start_publishes_no_stored_in_progress_event(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis, progress=True)
    await state.start(req.response_id, req.conversation_id)

    rerun = await state.start(req.response_id, req.conversation_id)

    assert (rerun.attempt, rerun.announced) == (2, False)
    assert [event.type for _, event in await stream(redis, req.response_id)] == [events.IN_PROGRESS]


async def test_start_of_a_record_without_a_stored_in_progress_event_publishes_none(
    redis: ArqRedis, state: TurnState
) -> None:
    req = await store_queued(redis)

    started = await state.start(req.response_id, req.conversation_id)

    assert (started.attempt, started.announced) == (1, False)
    assert await redis.xlen(keys.events(req.response_id)) == 0


async def test_start_of_a_turn_cancelled_while_queued_publishes_no_in_progress(
    redis: ArqRedis, state: TurnState
) -> None:
    req = await store_queued(redis, progress=True)
    await redis.hset(keys.response(req.response_id), "cancel", "1")

    started = await state.start(req.response_id, req.conversation_id)

    assert (started.cancel_requested, started.announced) == (True, False)
    assert await redis.xlen(keys.events(req.response_id)) == 0


@pytest.mark.parametrize("head_status", [Status.QUEUED, Status.IN_PROGRESS])
async def test_a_turn_behind_an_unfinished_one_in_its_conversation_waits_unstarted(
    redis: ArqRedis, state: TurnState, head_status: Status
) -> None:
    conversation_id = await create_conversation(redis)
    first, second = [await store_queued(redis, conversation_id, progress=True) for _ in range(2)]
    for req in (first, second):
        await queue_turn(redis, conversation_id, req.response_id)
    if head_status == Status.IN_PROGRESS:
        await state.start(first.response_id, first.conversation_id)

    waiting = await state.start(second.response_id, second.conversation_id)

    assert (waiting.waiting, waiting.status_before, waiting.attempt) == (True, "queued", 0)
    assert waiting.request == second.model_dump_json()
    assert await status_of(redis, second.response_id) == "queued"
    assert int(await redis.hget(keys.response(second.response_id), "attempt")) == 0
    assert await redis.xlen(keys.events(second.response_id)) == 0
    turns = await redis.lrange(keys.conversation_turns(conversation_id), 0, -1)
    assert [t.decode() for t in turns] == [first.response_id, second.response_id]


async def test_a_turn_starts_once_the_turn_ahead_of_it_finished(redis: ArqRedis, state: TurnState) -> None:
    conversation_id = await create_conversation(redis)
    first, second = [await store_queued(redis, conversation_id) for _ in range(2)]
    for req in (first, second):
        await queue_turn(redis, conversation_id, req.response_id)
    await state.start(first.response_id, first.conversation_id)
    assert (await state.start(second.response_id, second.conversation_id)).waiting

    assert await finish(state, first, attempt=1)
    started = await state.start(second.response_id, second.conversation_id)

    assert (started.waiting, started.attempt) == (False, 1)
    assert await status_of(redis, second.response_id) == "in_progress"


async def test_start_drops_heads_of_its_conversation_that_finished_or_vanished(
    redis: ArqRedis, state: TurnState
) -> None:
    conversation_id = await create_conversation(redis)
    finished_head, mine = [await store_queued(redis, conversation_id) for _ in range(2)]
    for response_id in ("resp_vanished", finished_head.response_id, mine.response_id):
        await queue_turn(redis, conversation_id, response_id)
    # Finished without its commit reaching the queue (a record rewritten by hand, an old version's commit).
    await redis.hset(keys.response(finished_head.response_id), "status", Status.FAILED.value)

    started = await state.start(mine.response_id, mine.conversation_id)

    assert (started.waiting, started.attempt) == (False, 1)
    assert await redis.lrange(keys.conversation_turns(conversation_id), 0, -1) == [mine.response_id.encode()]


async def test_only_the_requests_own_conversation_id_counts_not_a_metadata_value_of_that_name(
    redis: ArqRedis, state: TurnState
) -> None:
    conversation_id = await create_conversation(redis)
    running = await store_queued(redis, conversation_id)
    await queue_turn(redis, conversation_id, running.response_id)
    await state.start(running.response_id, running.conversation_id)
    unrelated = await store_queued(redis, metadata={"conversation_id": conversation_id})

    started = await state.start(unrelated.response_id, unrelated.conversation_id)

    assert (started.waiting, started.attempt) == (False, 1)


# --- finish -------------------------------------------------------------------------------------


async def test_finish_stores_final_status_response_and_terminal_event(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.append(req.response_id, 0, [events.lifecycle(events.CREATED, {"id": req.response_id})])
    await state.start(req.response_id, req.conversation_id)
    await state.append(req.response_id, 1, [delta("hello")])

    assert await finish(state, req, attempt=1) is True

    assert await status_of(redis, req.response_id) == "completed"
    stored = json.loads(await redis.hget(keys.response(req.response_id), "response"))
    assert stored["status"] == "completed"
    entries = await stream(redis, req.response_id)
    entry_id, terminal = entries[-1]
    assert (entry_id, terminal.seq, terminal.attempt) == ("2-1", 2, 1)
    assert terminal.terminal
    assert terminal.json()["type"] == events.COMPLETED
    assert terminal.json()["response"] == stored
    assert terminal.json()["sequence_number"] == 2


async def test_finish_writes_the_pending_events_in_order_just_before_the_terminal_event(
    redis: ArqRedis, state: TurnState
) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)
    await state.append(req.response_id, 1, [delta("a")])
    pending = [delta("b"), events.text_done("msg_1", 0, "ab"), events.content_part_done("msg_1", 0, "ab")]

    assert await finish(state, req, attempt=1, pending=pending) is True

    entries = [event for _, event in await stream(redis, req.response_id)]
    assert [event.type for event in entries] == [
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        events.COMPLETED,
    ]
    assert [event.seq for event in entries] == [0, 1, 2, 3, 4]
    assert {event.attempt for event in entries} == {1}
    assert [event.json() for event in entries[1:4]] == [
        {"sequence_number": seq, **event} for seq, event in enumerate(pending, start=1)
    ]


async def test_a_refused_finish_writes_none_of_its_pending_events(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)
    await state.start(req.response_id, req.conversation_id)  # a re-run took the turn over

    assert await finish(state, req, attempt=1, pending=[delta("zombie")]) is False

    assert await redis.xlen(keys.events(req.response_id)) == 0


async def test_finish_sets_response_and_stream_ttls(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)

    await state.finish(
        req.response_id,
        expect=Status.IN_PROGRESS,
        attempt=1,
        final=Status.COMPLETED,
        response=build_response(req, Status.COMPLETED),
        conversation_id=None,
        items=[],
        response_ttl_s=120,
    )

    assert 0 < await redis.ttl(keys.response(req.response_id)) <= 120
    assert 0 < await redis.ttl(keys.events(req.response_id)) <= RETENTION.stream_ttl_s


async def test_finish_twice_commits_once(redis: ArqRedis, state: TurnState) -> None:
    conversation_id = await create_conversation(redis)
    req = await store_queued(redis, conversation_id)
    await queue_turn(redis, conversation_id, req.response_id)
    await state.start(req.response_id, req.conversation_id)
    items = [events.message_item("msg_a", "answer", "completed")]

    first = await finish(state, req, attempt=1, items=items)
    second = await finish(state, req, attempt=1, final=Status.FAILED, items=items)

    assert (first, second) == (True, False)
    assert await stored_items(redis, conversation_id) == items
    assert await status_of(redis, req.response_id) == "completed"
    terminals = [event for _, event in await stream(redis, req.response_id) if event.terminal]
    assert len(terminals) == 1


async def test_finish_by_older_attempt_is_refused(redis: ArqRedis, state: TurnState) -> None:
    conversation_id = await create_conversation(redis)
    req = await store_queued(redis, conversation_id)
    await state.start(req.response_id, req.conversation_id)
    await state.start(req.response_id, req.conversation_id)

    refused = await finish(state, req, attempt=1, items=[events.message_item("msg_old", "zombie", "completed")])

    assert refused is False
    assert await status_of(redis, req.response_id) == "in_progress"
    assert await stored_items(redis, conversation_id) == []
    assert await redis.xlen(keys.events(req.response_id)) == 0
    assert await finish(state, req, attempt=2) is True


async def test_cancel_before_pickup_finishes_a_queued_turn(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)

    committed = await finish(state, req, attempt=None, expect=Status.QUEUED, final=Status.CANCELLED)

    assert committed is True
    assert await status_of(redis, req.response_id) == "cancelled"
    (_, terminal), = await stream(redis, req.response_id)
    assert terminal.type == events.INCOMPLETE
    assert terminal.json()["response"]["status"] == "cancelled"
    assert (await state.start(req.response_id, req.conversation_id)).status_before == "cancelled"


async def test_cancel_before_pickup_is_refused_once_the_turn_started(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await state.start(req.response_id, req.conversation_id)

    committed = await finish(state, req, attempt=None, expect=Status.QUEUED, final=Status.CANCELLED)

    assert committed is False
    assert await status_of(redis, req.response_id) == "in_progress"
    assert await redis.xlen(keys.events(req.response_id)) == 0


async def test_finish_pops_the_turn_and_wakes_the_next_one(redis: ArqRedis, state: TurnState) -> None:
    conversation_id = await create_conversation(redis)
    first, second, third = [await store_queued(redis, conversation_id) for _ in range(3)]
    for req in (first, second, third):
        await queue_turn(redis, conversation_id, req.response_id)
    await state.start(first.response_id, first.conversation_id)

    assert await finish(state, first, attempt=1)

    turns = await redis.lrange(keys.conversation_turns(conversation_id), 0, -1)
    assert [t.decode() for t in turns] == [second.response_id, third.response_id]
    assert await redis.lrange(keys.turn_wake(second.response_id), 0, -1) == [b"1"]
    assert await redis.exists(keys.turn_wake(third.response_id)) == 0
    assert 0 < await redis.ttl(keys.turn_wake(second.response_id)) <= RETENTION.conversation_ttl_s


async def test_finish_of_the_last_turn_leaves_no_turns_and_wakes_nobody(redis: ArqRedis, state: TurnState) -> None:
    conversation_id = await create_conversation(redis)
    req = await store_queued(redis, conversation_id)
    await queue_turn(redis, conversation_id, req.response_id)
    await state.start(req.response_id, req.conversation_id)

    assert await finish(state, req, attempt=1)

    assert await redis.llen(keys.conversation_turns(conversation_id)) == 0
    assert await redis.keys(keys.TURN_WAKE_PREFIX + "*") == []


async def test_finished_turns_leave_no_wake_tokens_behind(redis: ArqRedis, state: TurnState) -> None:
    conversation_id = await create_conversation(redis)
    first, second, third = [await store_queued(redis, conversation_id) for _ in range(3)]
    for req in (first, second, third):
        await queue_turn(redis, conversation_id, req.response_id)
    await state.start(first.response_id, first.conversation_id)
    assert await finish(state, third, attempt=None, expect=Status.QUEUED, final=Status.CANCELLED)
    assert await finish(state, first, attempt=1)
    await state.start(second.response_id, second.conversation_id)  # picked up late: it heads the queue and never waits

    assert await finish(state, second, attempt=1)

    assert await redis.llen(keys.conversation_turns(conversation_id)) == 0
    assert await redis.keys(keys.TURN_WAKE_PREFIX + "*") == []


async def test_finish_appends_items_to_the_conversation_in_order_and_refreshes_its_ttl(
    redis: ArqRedis, state: TurnState
) -> None:
    conversation_id = await create_conversation(redis)
    req = await store_queued(redis, conversation_id)
    await state.start(req.response_id, req.conversation_id)
    items = [
        *req.input,
        events.function_call_item("fc_1", "call_1", "lookup", "{}", "completed"),
        events.function_call_output_item("fco_1", "call_1", "42", "completed"),
        events.message_item("msg_2", "It is 42.", "completed"),
    ]

    assert await finish(state, req, attempt=1, items=items)

    assert await stored_items(redis, conversation_id) == items
    assert 60 < await redis.ttl(keys.conversation(conversation_id)) <= RETENTION.conversation_ttl_s
    assert 60 < await redis.ttl(keys.conversation_items(conversation_id)) <= RETENTION.conversation_ttl_s


async def test_conversation_deleted_before_finish_gets_no_items_and_is_not_recreated(
    redis: ArqRedis, state: TurnState
) -> None:
    conversation_id = await create_conversation(redis)
    req = await store_queued(redis, conversation_id)
    await queue_turn(redis, conversation_id, req.response_id)
    await state.start(req.response_id, req.conversation_id)
    await redis.delete(keys.conversation(conversation_id), keys.conversation_items(conversation_id))

    committed = await finish(state, req, attempt=1, items=[events.message_item("msg_x", "orphan", "completed")])

    assert committed is True
    assert await status_of(redis, req.response_id) == "completed"
    assert await redis.exists(keys.conversation(conversation_id)) == 0
    assert await redis.exists(keys.conversation_items(conversation_id)) == 0


def test_retention_reads_its_limits_from_settings() -> None:
    settings = Settings(
        stream_ttl_s=1, response_ttl_s=2, conversation_ttl_s=3, stream_maxlen=4, compact_finished_turns=False
    )

    assert Retention.from_settings(settings) == Retention(1, 2, 3, 4, compact=False)
    assert Retention.from_settings(Settings()).compact  # finished turns are stored compact unless turned off



async def test_append_retried_with_the_same_batch_id_is_written_once(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    started = await state.start(req.response_id, req.conversation_id)
    batch = [delta("a"), delta("b")]

    await state.append(req.response_id, started.attempt, batch, "1:1")
    await state.append(req.response_id, started.attempt, batch, "1:1")  # the reply was lost: sent again
    await state.append(req.response_id, started.attempt, [delta("c")], "1:2")

    stored = [e.json()["delta"] for _, e in await stream(redis, req.response_id)]
    assert stored == ["a", "b", "c"]


async def test_finish_removes_the_turn_from_the_active_index(redis: ArqRedis, state: TurnState) -> None:
    req = await store_queued(redis)
    await redis.zadd(keys.active_turns(), {req.response_id: 1})
    await state.start(req.response_id, req.conversation_id)

    await finish(state, req, attempt=1)

    assert await redis.zscore(keys.active_turns(), req.response_id) is None


async def test_append_many_writes_each_turn_and_reports_each_outcome(redis: ArqRedis, state: TurnState) -> None:
    running = await store_queued(redis)
    attempt = (await state.start(running.response_id, running.conversation_id)).attempt
    finished = await store_queued(redis)
    await state.start(finished.response_id, finished.conversation_id)
    await finish(state, finished, attempt=1)

    outcomes = await state.append_many(
        [(running.response_id, attempt, [delta("a")], "1:1"), (finished.response_id, 1, [delta("late")], "1:1")]
    )

    assert outcomes[0] is False  # written, no cancel requested
    assert isinstance(outcomes[1], StaleTurn)
    assert [e.json()["delta"] for _, e in await stream(redis, running.response_id)] == ["a"]


async def test_append_many_reloads_the_script_a_restarted_redis_forgot() -> None:
    # In-process only: SCRIPT FLUSH on the suite's redis-server would empty every database's scripts.
    redis = EmbeddedRedis().client(Settings())
    state = TurnState(redis, RETENTION)
    req = await store_queued(redis)
    attempt = (await state.start(req.response_id, req.conversation_id)).attempt
    await redis.script_flush()

    assert await state.append_many([(req.response_id, attempt, [delta("a")], "1:1")]) == [False]
