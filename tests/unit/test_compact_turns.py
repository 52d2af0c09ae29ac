"""A finished turn stored compact: one stream entry of every event, compressed JSON values in its record.

What a reader gets must not change: replay, resume after any sequence number, a tail blocked mid-stream while
the turn commits, the record read back, and a gateway decoding with nothing but zlib and JSON.
"""

from __future__ import annotations

import asyncio
import json
import zlib

import pytest
from arq.connections import ArqRedis

from shared import events, ids, keys, response_record
from shared.events import StreamEvent
from shared.models import Status, TurnRequest
from shared.response_object import build_response
from shared.stored_form import COMPACT_FIELD, pack_json, unpack_json
from shared.stream_tail import read_after, tail
from shared.turn_state import Retention, TurnState
from tests import queued_records

COMPACT = Retention(stream_ttl_s=600, response_ttl_s=7200, conversation_ttl_s=3600, stream_maxlen=20_000, compact=True)
GUARD_S = 3.0


@pytest.fixture
def redis(script_redis: ArqRedis) -> ArqRedis:
    return script_redis


@pytest.fixture
def state(redis: ArqRedis) -> TurnState:
    return TurnState(redis, COMPACT)


async def started_turn(redis: ArqRedis, state: TurnState) -> tuple[TurnRequest, list[StreamEvent]]:
    """A turn accepted (its `response.created`) and started as attempt 1; the stream as its start returned it."""
    req = TurnRequest(response_id=ids.response_id(), model="test-model", input=[])
    await queued_records.store_queued(redis, req, current=True)
    await state.append(req.response_id, 0, [events.lifecycle(events.CREATED, build_response(req, Status.QUEUED))])
    started = await state.start(req.response_id, None)
    assert started.attempt == 1 and started.entries is not None
    return req, started.entries


def delta(text: str) -> events.Event:
    return events.text_delta("msg_" + "0" * 48, 0, text)


async def write_deltas(state: TurnState, req: TurnRequest, known: list[StreamEvent], count: int) -> None:
    """Appends `count` deltas and adds them to `known` as the emitter records them (worker/emitter.py)."""
    for i in range(count):
        event = delta(f"word{i} ")
        await state.append(req.response_id, 1, [event])
        seq = len(known)
        known.append(StreamEvent(seq, event["type"], 1, events.numbered(seq, events.encode(event))))


async def commit(
    state: TurnState, req: TurnRequest, known: list[StreamEvent] | None, pending: int = 2, project: str = "default"
) -> dict:
    response = build_response(req, Status.COMPLETED)
    response["usage"] = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    assert await state.finish(
        req.response_id,
        expect=Status.IN_PROGRESS,
        attempt=1,
        final=Status.COMPLETED,
        response=response,
        conversation_id=None,
        items=[],
        pending=[delta(f"tail{i} ") for i in range(pending)],
        stream=known,
        project=project,
    )
    return response


async def plain_stream(redis: ArqRedis, response_id: str) -> list[StreamEvent]:
    return await read_after(redis, response_id, -1)


async def test_a_finished_turn_known_whole_is_one_entry_that_replays_every_event_as_written(
    redis: ArqRedis, state: TurnState
) -> None:
    req, known = await started_turn(redis, state)
    await write_deltas(state, req, known, 5)
    before = await plain_stream(redis, req.response_id)  # the plain entries, as every reader saw them live
    response = await commit(state, req, known)

    entries = await redis.xrange(keys.events(req.response_id))
    [(entry_id, fields)] = entries
    replayed = await read_after(redis, req.response_id, -1)
    last = len(before) + 2
    assert entry_id == f"{last}-1".encode() and fields[b"seq"] == str(last).encode()
    assert replayed[: len(before)] == before
    tail_events = [json.loads(e.data) for e in replayed[len(before) :]]
    assert [e["sequence_number"] for e in tail_events] == list(range(len(before), last + 1))
    assert [e["delta"] for e in tail_events[:2]] == ["tail0 ", "tail1 "]
    assert tail_events[-1] == {"sequence_number": last, **events.lifecycle(events.COMPLETED, response)}
    assert [e.attempt for e in replayed] == [0, 1] + [1] * (last - 1)
    assert int(await redis.hget(keys.response(req.response_id), "seq")) == last


async def test_resume_after_any_event_of_a_compact_stream_gets_exactly_what_follows(
    redis: ArqRedis, state: TurnState
) -> None:
    req, known = await started_turn(redis, state)
    await write_deltas(state, req, known, 4)
    await commit(state, req, known)
    everything = await read_after(redis, req.response_id, -1)

    for after in range(-1, len(everything)):
        assert await read_after(redis, req.response_id, after) == everything[after + 1 :]
    for after in range(-1, len(everything) - 1):  # a tail after the terminal event would wait for more
        async with asyncio.timeout(GUARD_S):
            followed = [event async for event in tail(redis, req.response_id, after, block_ms=100)]
        assert followed == everything[after + 1 :]


async def test_a_tail_blocked_mid_stream_when_the_turn_commits_gets_the_rest_once_in_order(
    redis: ArqRedis, state: TurnState
) -> None:
    req, known = await started_turn(redis, state)
    await write_deltas(state, req, known, 3)
    got: list[StreamEvent] = []
    caught_up = asyncio.Event()

    async def follow() -> None:
        async for event in tail(redis, req.response_id, -1, block_ms=2000):
            got.append(event)
            if event.seq == len(known) - 1:
                caught_up.set()

    follower = asyncio.create_task(follow())
    async with asyncio.timeout(GUARD_S):
        await caught_up.wait()
        await asyncio.sleep(0.05)  # blocked in XREAD at the last plain entry
        await commit(state, req, known)
        await follower

    assert [e.seq for e in got] == list(range(len(known) + 3))
    assert got == await read_after(redis, req.response_id, -1)
    assert got[-1].terminal


async def test_a_stream_the_commit_does_not_know_whole_is_finished_in_the_plain_form(
    redis: ArqRedis, state: TurnState
) -> None:
    req, known = await started_turn(redis, state)
    await write_deltas(state, req, known, 3)
    await state.append(req.response_id, 1, [delta("not in the worker's record")])  # as a write whose reply was lost
    await commit(state, req, known)

    entries = await redis.xrange(keys.events(req.response_id))
    assert len(entries) == len(known) + 1 + 3  # every event its own entry, none compacted
    assert not any(COMPACT_FIELD.encode() in fields for _, fields in entries)
    assert [e.seq for e in await read_after(redis, req.response_id, -1)] == list(range(len(entries)))


async def test_without_compact_retention_a_finished_turn_keeps_one_entry_per_event(redis: ArqRedis) -> None:
    plain = TurnState(redis, Retention(600, 7200, 3600, 20_000))
    req, _ = await started_turn(redis, TurnState(redis, COMPACT))
    known = await read_after(redis, req.response_id, -1)
    await write_deltas(plain, req, known, 2)
    await commit(plain, req, known)

    assert await redis.xlen(keys.events(req.response_id)) == len(known) + 3
    assert (await redis.hget(keys.response(req.response_id), "response")).startswith(b"{")


async def test_a_gateway_decodes_the_compact_entry_and_record_with_zlib_and_json_alone(
    redis: ArqRedis, state: TurnState
) -> None:
    req, known = await started_turn(redis, state)
    await write_deltas(state, req, known, 2)
    response = await commit(state, req, known)
    expected = await read_after(redis, req.response_id, -1)

    # As the README's stream contract describes it, with nothing of this project's code.
    [(_, fields)] = await redis.xrange(keys.events(req.response_id))
    decoded = json.loads(zlib.decompress(fields[b"events"]))
    assert [(e["seq"], e["type"], e["attempt"], e["data"]) for e in decoded] == [
        (e.seq, e.type, e.attempt, e.data) for e in expected
    ]
    assert all(json.loads(e["data"])["sequence_number"] == e["seq"] for e in decoded)
    stored = await redis.hget(keys.response(req.response_id), "response")
    assert stored[:1] != b"{" and json.loads(zlib.decompress(stored)) == response
    # The request here is as this test stored it, plain: "{" first means JSON as it is.
    request = await redis.hget(keys.response(req.response_id), "request")
    assert json.loads(request if request[:1] == b"{" else zlib.decompress(request))["response_id"] == req.response_id


async def test_the_record_reads_back_the_same_compressed_or_plain(redis: ArqRedis, state: TurnState) -> None:
    req, known = await started_turn(redis, state)
    response = await commit(state, req, known)

    record = await response_record.load(redis, req.response_id)
    assert record is not None and record.response == response and record.request == req
    assert await response_record.conversation_of(redis, req.response_id) is None
    # A record written before compression (or with it turned off) reads the same.
    plain = {"request": req.model_dump_json(), "response": json.dumps(response)}
    await redis.hset(keys.response(req.response_id), mapping=plain)
    again = await response_record.load(redis, req.response_id)
    assert again is not None and again.response == response and again.request == req


async def test_the_commit_settles_the_usage_it_is_given_without_decoding_the_response(
    redis: ArqRedis, state: TurnState
) -> None:
    req, known = await started_turn(redis, state)
    await commit(state, req, known, project="p")

    usage = {k.decode().split(":", 1)[1]: int(v) for k, v in (await redis.hgetall(keys.project_usage("p"))).items()}
    assert usage == {"turns": 1, "input_tokens": 3, "output_tokens": 5}


def test_stored_json_values_read_back_whether_compressed_or_not() -> None:
    text = json.dumps({"id": "resp_1", "text": "ünïcode " * 20})

    assert pack_json(text)[:1] == b"x"  # zlib's header: never a JSON object's "{"
    assert unpack_json(pack_json(text)) == text
    assert unpack_json(text.encode()) == text
    assert unpack_json(b"") == ""


@pytest.mark.parametrize(
    ("position", "seen"), [("0-0", -1), ("0-1", 0), ("57-1", 57), ("-1-1", -1), ("5-0", 4)], ids=str
)
def test_a_stream_position_tells_the_last_event_a_reader_there_has_seen(position: str, seen: int) -> None:
    # What a reader keeps of a compact entry it reads from that position: the events after `seen`.
    assert events.seq_at(position) == seen


async def test_a_conversation_turn_committed_compact_still_feeds_its_last_events_to_the_conversation(
    redis: ArqRedis, state: TurnState
) -> None:
    conversation_id = ids.conversation_id()
    req = TurnRequest(response_id=ids.response_id(), model="test-model", input=[], conversation_id=conversation_id)
    await queued_records.store_queued(redis, req, current=True)
    await redis.hset(keys.response(req.response_id), mapping={
        "feed": keys.conversation_feed(conversation_id), "feed_seq": keys.conversation_feed_counter(conversation_id)})
    await state.append(req.response_id, 0, [events.lifecycle(events.CREATED, build_response(req, Status.QUEUED))])
    started = await state.start(req.response_id, None)
    assert started.entries is not None
    known = list(started.entries)
    await write_deltas(state, req, known, 3)
    await commit(state, req, known)

    [(_, compact_fields)] = await redis.xrange(keys.events(req.response_id))
    assert COMPACT_FIELD.encode() in compact_fields  # the response's stream went compact
    fed = [json.loads(fields[b"data"]) for _, fields in await redis.xrange(keys.conversation_feed(conversation_id))]
    replayed = [json.loads(e.data) for e in await read_after(redis, req.response_id, -1)]
    assert [{k: v for k, v in e.items() if k != "response_id"} for e in fed] == replayed
    assert fed[-1]["type"] == events.COMPLETED and {e["response_id"] for e in fed} == {req.response_id}
