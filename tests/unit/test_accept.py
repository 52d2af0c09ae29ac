"""Accepting a turn: rendered first, then every check and write in one script; a refusal writes nothing."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import deserialize_job

from api.auth import OPEN, Caller
from api.deps import Services
from api.errors import APIError
from api.idempotency import claim
from api.live_workers import LiveWorkers
from api.schemas import CreateResponseBody
from api.turns import _render, accept
from shared import events, fleet, ids, keys
from shared.models import TurnRequest
from shared.queue import RUN_TURN
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings
from shared.stored_form import unpack_json
from shared.stream_tail import read_after
from shared.turn_accept import Accepted
from shared.turn_state import Retention
from tests import api_services
from tests.unit.test_fleet import worker_beat

SETTINGS = Settings(max_queue_depth=3)
RETENTION = Retention.from_settings(SETTINGS)
KEYED = Caller("p", key_id="key_1", max_concurrent=2)


@pytest.fixture
def redis() -> ArqRedis:
    return EmbeddedRedis().client(SETTINGS)


def services(redis: ArqRedis) -> Services:
    return api_services.services(redis, SETTINGS)


def request(caller: Caller = OPEN, **fields: Any) -> TurnRequest:
    message = {"id": ids.message_id(), "type": "message", "role": "user", "status": "completed",
               "content": [{"type": "input_text", "text": "hi"}]}
    return TurnRequest(response_id=ids.response_id(), model="m", input=[message], project=caller.project,
                       key_id=caller.key_id, **fields)


async def conversation(redis: ArqRedis, project: str = "default") -> str:
    conversation_id = ids.conversation_id()
    await redis.set(keys.conversation(conversation_id), json.dumps({"id": conversation_id, "project": project}))
    return conversation_id


async def refused(redis: ArqRedis, req: TurnRequest, caller: Caller = OPEN) -> APIError:
    """Accepts `req` expecting a refusal, and checks that it wrote nothing at all."""
    before = set(await redis.keys("*"))
    with pytest.raises(APIError) as raised:
        await accept(services(redis), req, caller)
    assert set(await redis.keys("*")) == before
    return raised.value


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [{"type": "function", "name": "f", "parameters": {"maximum": float("nan")}}]},
        {"tools": [{"type": "function", "name": "f", "parameters": {"maximum": float("inf")}}]},
        {"instructions": "\ud800"},
    ],
    ids=["nan", "infinity", "lone surrogate"],
)
async def test_a_turn_that_cannot_be_rendered_is_refused_before_anything_is_stored(
    redis: ArqRedis, fields: dict[str, Any]
) -> None:
    with pytest.raises(APIError) as raised:
        await accept(services(redis), request(**fields), OPEN)

    assert raised.value.status == 400
    assert await redis.keys("*") == []


async def test_an_accepted_turn_returns_exactly_the_response_it_stored(redis: ArqRedis) -> None:
    req = request(metadata={"k": "ünïcode"})

    returned = (await accept(services(redis), req, OPEN)).response_json

    stored = await redis.hget(keys.response(req.response_id), "response")
    assert json.loads(returned) == json.loads(unpack_json(stored))
    assert stored[:1] != b"{"  # kept compressed (shared/stored_form.py); what is returned is the JSON
    assert json.loads(returned)["status"] == "queued"


async def test_one_accept_writes_the_record_its_first_events_the_job_and_the_wake(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis, "p")
    req = request(KEYED, conversation_id=conversation_id, background=True)

    accepted = await accept(services(redis), req, KEYED)

    rid = req.response_id
    stored = await redis.hgetall(keys.response(rid))
    record = {k.decode(): unpack_json(v) if k in (b"request", b"response") else v.decode() for k, v in stored.items()}
    assert (record["status"], record["attempt"], record["seq"], record["project"]) == ("queued", "0", "1", "p")
    assert record["conversation"] == conversation_id  # for jobs that do not carry it
    assert TurnRequest.model_validate_json(record["request"]) == req
    progress = json.loads(record["progress"])  # what the worker's start script writes as its first event
    assert progress["type"] == events.IN_PROGRESS and progress["response"]["status"] == "in_progress"
    assert 0 < await redis.ttl(keys.response(rid)) <= RETENTION.response_ttl_s
    written = await read_after(redis, rid, -1)
    assert [(e.seq, e.type, e.attempt) for e in written] == [(0, events.CREATED, 0), (1, events.QUEUED, 0)]
    # A create's own stream sends these without reading them back: they must be the stored bytes.
    assert accepted.written == written
    job = deserialize_job(await redis.get(keys.arq_job(rid)))
    assert (job.function, job.args) == (RUN_TURN, (rid, conversation_id))  # the start script's keys
    assert await redis.zscore(SETTINGS.queue_name, rid) == job.enqueue_time.timestamp() * 1000
    assert await redis.lrange(keys.QUEUE_WAKE, 0, -1) == [b"1"]
    assert await redis.zscore(keys.active_turns(), rid) is not None
    assert await redis.lrange(keys.conversation_turns(conversation_id), 0, -1) == [rid.encode()]
    assert 0 < await redis.ttl(keys.conversation_turns(conversation_id)) <= RETENTION.conversation_ttl_s
    assert await redis.zrange(keys.api_key_inflight("key_1"), 0, -1) == [rid.encode()]


async def test_with_no_live_worker_a_waited_for_turn_is_refused_and_a_background_one_queued(redis: ArqRedis) -> None:
    svc = dataclasses.replace(services(redis), workers=LiveWorkers(redis, SETTINGS.queue_name, cache_s=1.0))
    before = set(await redis.keys("*"))
    with pytest.raises(APIError) as raised:
        await accept(svc, request(), OPEN)
    assert set(await redis.keys("*")) == before
    error = raised.value
    assert (error.status, error.type, error.code, error.retry_after) == (503, "server_error", "no_live_workers", 5)
    assert "`turnstream worker`" in error.message and SETTINGS.queue_name in error.message

    queued = await accept(svc, request(background=True), OPEN)
    assert json.loads(queued.response_json)["status"] == "queued"

    await fleet.beat(redis, worker_beat("w", SETTINGS.queue_name), ttl_s=30)
    await accept(svc, request(), OPEN)


async def test_another_projects_conversation_is_not_found_and_nothing_is_written(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis, "other")

    error = await refused(redis, request(KEYED, conversation_id=conversation_id), KEYED)

    assert (error.status, error.code, error.param) == (404, "not_found", "conversation")


async def test_a_missing_conversation_is_not_found(redis: ArqRedis) -> None:
    error = await refused(redis, request(conversation_id=ids.conversation_id()))

    assert error.status == 404


async def test_a_full_queue_refuses_with_503(redis: ArqRedis) -> None:
    svc = services(redis)
    for _ in range(SETTINGS.max_queue_depth):
        await accept(svc, request(), OPEN)

    error = await refused(redis, request())

    assert (error.status, error.code) == (503, "queue_full")


async def test_a_refused_turn_gives_its_keys_slot_back(redis: ArqRedis) -> None:
    """The slot is taken in a step before the accept (the key's own slot on a cluster): a refusal returns it,
    so `refused` finds every key as it was, the key's in-flight set included."""
    svc = services(redis)
    for _ in range(SETTINGS.max_queue_depth):
        await accept(svc, request(), OPEN)

    error = await refused(redis, request(KEYED), KEYED)

    assert (error.status, error.code) == (503, "queue_full")


async def test_reject_refuses_while_a_turn_is_in_the_conversation_and_not_after_it_ended(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis)
    first = request(conversation_id=conversation_id)
    await accept(services(redis), first, OPEN)

    error = await refused(redis, request(conversation_id=conversation_id, conversation_lock="reject"))
    assert (error.status, error.code) == (409, "conversation_locked")

    # The first turn ended without leaving the queue (its worker died before the commit popped it):
    # a finished head never locks the conversation.
    await redis.hset(keys.response(first.response_id), "status", "failed")
    second = request(conversation_id=conversation_id, conversation_lock="reject")
    await accept(services(redis), second, OPEN)
    turns = await redis.lrange(keys.conversation_turns(conversation_id), 0, -1)
    assert turns == [second.response_id.encode()]


async def test_a_head_whose_record_is_gone_does_not_lock_the_conversation(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis)
    first = request(conversation_id=conversation_id)
    await accept(services(redis), first, OPEN)
    await redis.delete(keys.response(first.response_id))  # expired while still queued: it will never run

    second = request(conversation_id=conversation_id, conversation_lock="reject")
    await accept(services(redis), second, OPEN)

    turns = await redis.lrange(keys.conversation_turns(conversation_id), 0, -1)
    assert turns == [second.response_id.encode()]


async def test_wait_queues_turns_in_arrival_order(redis: ArqRedis) -> None:
    conversation_id = await conversation(redis)
    reqs = [request(conversation_id=conversation_id) for _ in range(3)]
    for req in reqs:
        await accept(services(redis), req, OPEN)

    turns = await redis.lrange(keys.conversation_turns(conversation_id), 0, -1)
    assert turns == [req.response_id.encode() for req in reqs]


async def test_a_keys_concurrent_turns_are_capped_and_finished_ones_free_their_slots(redis: ArqRedis) -> None:
    first, second = request(KEYED), request(KEYED)
    for req in (first, second):
        await accept(services(redis), req, KEYED)

    error = await refused(redis, request(KEYED), KEYED)
    assert (error.status, error.code) == (429, "concurrency_limit_exceeded")

    # A slot whose release was lost is repaired once it keeps a turn out.
    await redis.hset(keys.response(first.response_id), "status", "completed")
    third = request(KEYED)
    await accept(services(redis), third, KEYED)
    inflight = await redis.zrange(keys.api_key_inflight("key_1"), 0, -1)
    assert set(inflight) == {second.response_id.encode(), third.response_id.encode()}


async def test_a_turn_is_accepted_only_while_its_idempotency_claim_is_its_own(redis: ArqRedis) -> None:
    body = CreateResponseBody.model_validate({"model": "m", "input": "hi"})
    mine = await claim(redis, 60, "default", "responses", "k-1", body, ids.response_id)
    req = request()
    req.response_id = mine.object_id

    await accept(services(redis), req, OPEN, mine)

    stored = json.loads(await redis.get(mine.key))
    assert (stored["state"], stored["id"]) == ("accepted", req.response_id)
    again = await claim(redis, 60, "default", "responses", "k-1", body, ids.response_id)
    assert again.replay and again.object_id == req.response_id

    # Taken over by another request after this one stalled: the stalled one creates nothing.
    stalled = await claim(redis, 60, "default", "responses", "k-2", body, ids.response_id)
    late = request()
    late.response_id = stalled.object_id
    await redis.set(stalled.key, json.dumps({**json.loads(await redis.get(stalled.key)), "id": "resp_other"}))
    before = set(await redis.keys("*"))
    with pytest.raises(APIError) as raised:
        await accept(services(redis), late, OPEN, stalled)
    assert (raised.value.status, raised.value.code) == (409, "idempotency_key_in_use")
    assert set(await redis.keys("*")) == before


async def test_an_accept_run_again_after_its_answer_was_lost_accepts_the_turn_once(redis: ArqRedis) -> None:
    """A primary that dies after running the accept but before answering leaves the API to run it again (on the
    promoted replica, which has the write): it must answer `accepted` for the turn it already stored, not
    refuse it (the conversation is now held by that very turn, the queue may be full with it) and not write
    it twice, or the client, told of an error, would create the turn again."""
    conversation_id = await conversation(redis)
    req = request(conversation_id=conversation_id, conversation_lock="reject")
    svc = api_services.services(redis, Settings(max_queue_depth=1))
    await accept(svc, req, OPEN)
    stored = {key: await redis.dump(key) for key in await redis.keys("*")}

    turn = _render(req, SETTINGS.conversation_feed_ttl_s)
    again = await svc.acceptor._run(turn, None)

    assert again == Accepted(stopped=0)
    assert {key: await redis.dump(key) for key in await redis.keys("*")} == stored
    assert await redis.lrange(keys.conversation_turns(conversation_id), 0, -1) == [req.response_id.encode()]
