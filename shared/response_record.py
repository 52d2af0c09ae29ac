"""A turn's record, the response hash: its fields, and every read or write of it outside the Lua scripts.

The scripts in shared/lua change a turn's state (accept, start, append, commit); everything else that looks
at or touches a record — routes, fan-out, the cancel listener, the sweeper, the CLI — goes through here,
so a field's name and meaning live in one place.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.models import DEFAULT_PROJECT, Item, Status, TurnRequest
from shared.redis_conn import text
from shared.stored_form import unpack_json


class Field(enum.StrEnum):
    """The response hash's fields."""

    STATUS = "status"  # the turn's Status; moves on its own, the Response body only at the end
    ATTEMPT = "attempt"  # runs started so far (0 while queued)
    # The attempt that went back on the queue to wait for its upstream; the next start takes it and counts
    # the pickup in WAITS (a continuation, not a try: tries = attempt - waits). See shared/lua/defer_turn.lua.
    DEFERRED = "deferred"
    WAITS = "waits"
    SEQ = "seq"  # the last event's sequence number (-1 before any)
    BATCH = "batch"  # the id of the last event batch written, so a retried batch is written once
    CANCEL = "cancel"  # "1" once a cancel was requested
    # These two are stored compressed unless their first byte is "{" (shared/stored_form.py); read them here.
    REQUEST = "request"  # the TurnRequest (JSON), as the API validated it
    RESPONSE = "response"  # the Response (JSON): as accepted, then as finished
    PROGRESS = "progress"  # the encoded `response.in_progress` event the start script publishes; then dropped
    CONVERSATION = "conversation"  # the conversation id, '' for none (records of older API nodes lack it)
    PROJECT = "project"  # whose turn it is
    # A conversation turn's Response and webhook entry as cancelled, rendered at its accept, for a later turn's
    # `interrupt`/`rollback` accept to finish it with before pickup; dropped once the turn starts.
    CANCELLED = "cancelled"
    CANCELLED_HOOK = "cancelled_hook"
    ROLLBACK = "rollback"  # "1": stopped by a `rollback`; its commit adds nothing to the conversation
    FEED = "feed"  # the conversation's live feed its events are copied to (stored conversation turns)
    FEED_SEQ = "feed_seq"  # that feed's entry counter
    FEED_TTL = "feed_ttl"  # how long the feed lives after its last event (TURNSTREAM_CONVERSATION_FEED_TTL_S)


@dataclass(frozen=True)
class ResponseRecord:
    status: Status
    request: TurnRequest
    response: dict[str, Any]
    cancel_requested: bool


def new_record(
    req: TurnRequest,
    *,
    response_json: str,
    request_json: str,
    progress: str,
    cancelled_json: str | None = None,
    cancelled_hook: str | None = None,
    feed_ttl_s: int = 0,
) -> dict[str, str | int]:
    """The fields the accept writes for a queued turn."""
    record: dict[str, str | int] = {
        Field.STATUS: Status.QUEUED.value,
        Field.ATTEMPT: 0,
        Field.SEQ: -1,
        Field.REQUEST: request_json,
        Field.RESPONSE: response_json,
        Field.PROGRESS: progress,
        Field.CONVERSATION: req.conversation_id or "",
        Field.PROJECT: req.project,
    }
    if cancelled_json is not None and cancelled_hook is not None:
        record[Field.CANCELLED] = cancelled_json
        record[Field.CANCELLED_HOOK] = cancelled_hook
    # A store=false turn is seen by its creator alone, not by the feed.
    if req.conversation_id and req.store and feed_ttl_s > 0:
        record[Field.FEED] = keys.conversation_feed(req.conversation_id)
        record[Field.FEED_SEQ] = keys.conversation_feed_counter(req.conversation_id)
        record[Field.FEED_TTL] = feed_ttl_s
    return record


async def load(redis: Redis, response_id: str) -> ResponseRecord | None:
    status, request, response, cancel = await redis.hmget(
        keys.response(response_id), [Field.STATUS, Field.REQUEST, Field.RESPONSE, Field.CANCEL]
    )
    if status is None or request is None or response is None:
        return None
    body = json.loads(unpack_json(response))
    # The Response body is rewritten only when the turn finishes; the status field moves on its own.
    body["status"] = status.decode()
    return ResponseRecord(
        status=Status(status.decode()),
        request=TurnRequest.model_validate_json(unpack_json(request)),
        response=body,
        cancel_requested=bool(cancel),
    )


async def is_base_for(redis: Redis, response_id: str, project: str) -> bool:
    """Whether the record is `project`'s and stored (store=true): one a new turn may build on."""
    status, owner, request = await redis.hmget(
        keys.response(response_id), [Field.STATUS, Field.PROJECT, Field.REQUEST]
    )
    if status is None or request is None or (owner.decode() if owner else DEFAULT_PROJECT) != project:
        return False
    # A store=false response is never a base for another turn, as with OpenAI.
    return TurnRequest.model_validate_json(unpack_json(request)).store


async def conversation_of(redis: Redis, response_id: str) -> str | None:
    """The conversation a turn belongs to (None for none), from its record's `conversation` field, or from its
    request for a record written before that field existed."""
    conversation, request = await redis.hmget(keys.response(response_id), [Field.CONVERSATION, Field.REQUEST])
    if conversation is not None:
        return conversation.decode() or None
    if request is None:
        return None
    return TurnRequest.model_validate_json(unpack_json(request)).conversation_id


async def last_seq(redis: Redis, response_id: str) -> int:
    """The newest event's sequence number; -1 when there is none (or no record)."""
    return int(await redis.hget(keys.response(response_id), Field.SEQ) or -1)


async def tries(redis: Redis, response_id: str) -> int:
    """The turn's attempts that counted against TURNSTREAM_JOB_MAX_TRIES: those that were not pickups after a
    wait on the queue for the upstream."""
    attempt, waits = await redis.hmget(keys.response(response_id), [Field.ATTEMPT, Field.WAITS])
    return int(attempt or 0) - int(waits or 0)


@dataclass(frozen=True)
class Ending:
    """What a stream reader needs to tell whether a response's stream is over."""

    status: Status | None  # None: deleted or expired
    last_seq: int
    response_json: str | None


async def ending(redis: Redis, response_id: str) -> Ending:
    status, seq, response = await redis.hmget(keys.response(response_id), [Field.STATUS, Field.SEQ, Field.RESPONSE])
    return Ending(
        Status(status.decode()) if status is not None else None,
        int(seq or -1),
        unpack_json(response) if response is not None else None,
    )


async def _field_of_each(redis: Redis, response_ids: list[str], field: Field) -> list[Any]:
    """One field of each response's record, in one pipelined read (per node, on a cluster)."""
    async with redis.pipeline(transaction=False) as pipe:
        for response_id in response_ids:
            pipe.hget(keys.response(response_id), field)
        return list(await pipe.execute())


async def statuses(redis: Redis, response_ids: list[str]) -> list[Status | None]:
    """Each response's status (None: no record)."""
    found = await _field_of_each(redis, response_ids, Field.STATUS)
    return [Status(text(status)) if status is not None else None for status in found]


async def has_stream_or_record(redis: Redis, response_id: str) -> bool:
    return bool(await redis.exists(keys.response(response_id), keys.events(response_id)))


async def cancels_requested(redis: Redis, response_ids: list[str]) -> list[bool]:
    """Each response's cancel flag."""
    return [bool(flag) for flag in await _field_of_each(redis, response_ids, Field.CANCEL)]


async def request_cancel(redis: Redis, response_id: str) -> None:
    """Marks a running turn's cancel and tells its worker at once; the mark is what a worker that missed the
    signal reads (see worker/cancel_listener.py)."""
    await redis.hset(keys.response(response_id), Field.CANCEL, "1")
    await redis.publish(keys.CANCEL_CHANNEL, response_id)


async def delete(redis: Redis, response_id: str, record: ResponseRecord) -> None:
    """Deletes the record and its stream; a turn still queued or running is told to stop, its writes are refused
    from then on (the scripts find no record), and it leaves its conversation's turn queue."""
    if not record.status.terminal:
        await redis.publish(keys.CANCEL_CHANNEL, response_id)
    await redis.delete(keys.response(response_id), keys.events(response_id))
    if record.request.conversation_id and not record.status.terminal:
        await redis.lrem(keys.conversation_turns(record.request.conversation_id), 0, response_id)


# A depth no chain reaches (retention bounds chains): "the whole chain" for truncation "disabled".
WHOLE_CHAIN = 1_000_000


async def chain_items(redis: Redis, response_id: str, max_depth: int, project: str = DEFAULT_PROJECT) -> list[Item]:
    """The context a `previous_response_id` carries: every earlier turn's input and output, oldest first.

    The chain ends at a response of another project: a turn never reads history its project does not own.
    """
    turns: list[list[Item]] = []
    current: str | None = response_id
    while current and len(turns) < max_depth:
        record = await load(redis, current)
        if record is None or record.request.project != project:
            break
        turns.append(record.request.input + list(record.response.get("output") or []))
        current = record.request.previous_response_id
    return [item for turn in reversed(turns) for item in turn]
