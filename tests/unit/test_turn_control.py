"""Interrupt and rollback in the accept script, and the conversation feed the event scripts write, on both
the in-process Redis and a real redis-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from arq.connections import ArqRedis

from api.auth import Caller
from api.deps import Services
from api.turns import accept
from shared import events, ids, keys
from shared.events import decode_entry
from shared.models import Status, TurnRequest
from shared.response_object import build_response
from shared.settings import Settings
from shared.turn_state import Retention, TurnState
from tests import api_services

SETTINGS = Settings()
RETENTION = Retention.from_settings(SETTINGS)
KEYED = Caller("p", key_id="key_1", max_concurrent=10)


@pytest.fixture
def redis(script_redis: ArqRedis) -> ArqRedis:
    return script_redis


def services(redis: ArqRedis) -> Services:
    return api_services.services(redis, SETTINGS)


def request(conversation_id: str, lock: str = "wait", **fields: Any) -> TurnRequest:
    message = {"id": ids.message_id(), "type": "message", "role": "user", "status": "completed",
               "content": [{"type": "input_text", "text": "hi"}]}
    return TurnRequest(response_id=ids.response_id(), model="m", input=[message], project="p", key_id="key_1",
                       conversation_id=conversation_id, conversation_lock=lock, **fields)  # type: ignore[arg-type]


async def conversation(redis: ArqRedis) -> str:
    conversation_id = ids.conversation_id()
    await redis.set(keys.conversation(conversation_id), json.dumps({"id": conversation_id, "project": "p"}))
    return conversation_id


async def submit(redis: ArqRedis, req: TurnRequest) -> TurnRequest:
    await accept(services(redis), req, KEYED)
    return req


async def field(redis: ArqRedis, req: TurnRequest, name: str) -> str | None:
    value = await redis.hget(keys.response(req.response_id), name)
    return value.decode() if value is not None else None


async def turns(redis: ArqRedis, conversation_id: str) -> list[str]:
    return [t.decode() for t in await redis.lrange(keys.conversation_turns(conversation_id), 0, -1)]


async def items(redis: ArqRedis, conversation_id: str) -> list[dict[str, Any]]:
    return [json.loads(i) for i in await redis.lrange(keys.conversation_items(conversation_id), 0, -1)]


async def commit(state: TurnState, req: TurnRequest, output: list[dict[str, Any]]) -> bool:
    """The running turn's worker commits what it produced, as a cancelled turn does."""
    return await state.finish(
        req.response_id, expect=Status.IN_PROGRESS, attempt=1, final=Status.CANCELLED,
        response=build_response(req, Status.CANCELLED), conversation_id=req.conversation_id,
        items=req.input + output, project=req.project,
    )


PARTIAL = {"id": ids.message_id(), "type": "message", "role": "assistant", "status": "incomplete",
           "content": [{"type": "output_text", "text": "1 2", "annotations": []}]}


@pytest.mark.parametrize("lock", ["interrupt", "rollback"])
async def test_a_queued_turn_ahead_is_finished_cancelled_by_the_accept_itself(redis: ArqRedis, lock: str) -> None:
    conversation_id = await conversation(redis)
    running = await submit(redis, request(conversation_id))
    await TurnState(redis, RETENTION).start(running.response_id, conversation_id)
    queued = await submit(redis, request(conversation_id))

    new = await submit(redis, request(conversation_id, lock))

    assert await field(redis, queued, "status") == "cancelled"
    stored = json.loads(await field(redis, queued, "response") or "{}")
    assert (stored["id"], stored["status"], stored["output"]) == (queued.response_id, "cancelled", [])
    last = decode_entry((await redis.xrevrange(keys.events(queued.response_id), count=1))[0][1])
    assert (last.type, last.json()["response"]["status"]) == (events.INCOMPLETE, "cancelled")
    assert await turns(redis, conversation_id) == [running.response_id, new.response_id]
    assert await redis.zscore(keys.active_turns(), queued.response_id) is None
    # Its concurrent-turn slot counts no more: with the key's limit at the three turns it admitted, a fourth
    # is admitted (the full set drops the finished turn as it admits).
    fourth = request(ids.conversation_id())
    await redis.set(keys.conversation(fourth.conversation_id or ""), json.dumps({"id": "c", "project": "p"}))
    await accept(services(redis), fourth, Caller("p", key_id="key_1", max_concurrent=3))
    inflight = await redis.zrange(keys.api_key_inflight("key_1"), 0, -1)
    assert queued.response_id.encode() not in inflight and fourth.response_id.encode() in inflight
    assert await field(redis, queued, "cancelled") is None  # the rendered cancel is of no use any more
    # The running turn is told to stop and keeps its place ahead of the new one until it commits.
    assert await field(redis, running, "cancel") == "1"
    started = await TurnState(redis, RETENTION).start(new.response_id, conversation_id)
    assert started.waiting


async def test_a_running_turn_ahead_is_told_to_stop_on_the_cancel_channel(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis)
    running = await submit(redis, request(conversation_id))
    await TurnState(redis, RETENTION).start(running.response_id, conversation_id)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.CANCEL_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation

    await submit(redis, request(conversation_id, "interrupt"))

    message = None
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            break
    await pubsub.aclose()
    assert message is not None and message["data"] == running.response_id.encode()


@pytest.mark.parametrize(("lock", "kept"), [("interrupt", True), ("rollback", False)], ids=["interrupt", "rollback"])
async def test_the_stopped_turns_commit_keeps_its_output_under_interrupt_and_nothing_under_rollback(
    redis: ArqRedis, lock: str, kept: bool
) -> None:
    conversation_id = await conversation(redis)
    state = TurnState(redis, RETENTION)
    running = await submit(redis, request(conversation_id))
    await state.start(running.response_id, conversation_id)
    new = await submit(redis, request(conversation_id, lock))

    assert await commit(state, running, [PARTIAL])

    expected = [*running.input, PARTIAL] if kept else []
    assert await items(redis, conversation_id) == expected
    assert await field(redis, running, "status") == "cancelled"
    # The commit handed the conversation to the new turn.
    assert await turns(redis, conversation_id) == [new.response_id]
    assert not (await state.start(new.response_id, conversation_id)).waiting


async def test_wait_and_reject_stop_nothing(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis)
    first = await submit(redis, request(conversation_id))

    await submit(redis, request(conversation_id, "wait"))

    assert await field(redis, first, "status") == "queued"
    assert await field(redis, first, "cancel") is None


async def test_racing_interrupts_leave_one_live_turn(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis)
    reqs = [request(conversation_id, "interrupt") for _ in range(8)]

    await asyncio.gather(*(submit(redis, req) for req in reqs))

    statuses = [await field(redis, req, "status") for req in reqs]
    assert statuses.count("queued") == 1
    assert statuses.count("cancelled") == 7
    assert await turns(redis, conversation_id) == [reqs[statuses.index("queued")].response_id]


async def test_a_conversation_turns_events_are_copied_to_its_feed_in_order(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis)
    state = TurnState(redis, RETENTION)
    first = await submit(redis, request(conversation_id))
    await state.start(first.response_id, conversation_id)
    await state.append(first.response_id, 1, [events.text_delta("msg_1", 0, "a")])
    await state.finish(first.response_id, expect=Status.IN_PROGRESS, attempt=1, final=Status.COMPLETED,
                       response=build_response(first, Status.COMPLETED), conversation_id=conversation_id,
                       items=[], project="p")
    second = await submit(redis, request(conversation_id))

    entries = await redis.xrange(keys.conversation_feed(conversation_id))
    feed = [(entry_id.decode(), decode_entry(fields), fields[b"response_id"].decode()) for entry_id, fields in entries]
    assert [entry_id for entry_id, _, _ in feed] == [f"{n}-1" for n in range(len(feed))]
    assert [(rid, event.type) for _, event, rid in feed] == [
        (first.response_id, events.CREATED),
        (first.response_id, events.IN_PROGRESS),
        (first.response_id, "response.output_text.delta"),
        (first.response_id, events.COMPLETED),
        (second.response_id, events.CREATED),
    ]
    # Each entry carries the response's own event, byte for byte but for the response id in front.
    own = decode_entry((await redis.xrange(keys.events(first.response_id)))[2][1])
    body = feed[2][1].json()
    assert body.pop("response_id") == first.response_id
    assert body == own.json()
    # The feed is for following live: it lives its own (short) TTL after its last event, not the stream's day.
    for key in (keys.conversation_feed(conversation_id), keys.conversation_feed_counter(conversation_id)):
        assert 0 < await redis.ttl(key) <= SETTINGS.conversation_feed_ttl_s < RETENTION.stream_ttl_s


async def test_with_feeds_off_a_conversation_turn_writes_no_feed(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis)
    services_without_feeds = services(redis)
    services_without_feeds.settings = SETTINGS.model_copy(update={"conversation_feed_ttl_s": 0})
    req = request(conversation_id)

    await accept(services_without_feeds, req, KEYED)
    await TurnState(redis, RETENTION).start(req.response_id, conversation_id)

    assert await redis.exists(keys.conversation_feed(conversation_id)) == 0
    assert await field(redis, req, "feed") is None


async def test_a_store_false_turn_stays_out_of_the_feed(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis)

    await submit(redis, request(conversation_id, store=False))

    assert await redis.exists(keys.conversation_feed(conversation_id)) == 0
