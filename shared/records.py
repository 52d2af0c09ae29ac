"""Reading stored responses and conversations; both the API and the worker use these."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.models import DEFAULT_PROJECT, Item, Status, TurnRequest
from shared.stored_form import unpack_json


@dataclass(frozen=True)
class ResponseRecord:
    status: Status
    request: TurnRequest
    response: dict[str, Any]
    cancel_requested: bool


async def load_response(redis: Redis, response_id: str) -> ResponseRecord | None:
    status, request, response, cancel = await redis.hmget(
        keys.response(response_id), ["status", "request", "response", "cancel"]
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


async def conversation_of(redis: Redis, response_id: str) -> str | None:
    """The conversation a turn belongs to (None for none), from its record's `conversation` field, or from its
    request for a record written before that field existed."""
    conversation, request = await redis.hmget(keys.response(response_id), ["conversation", "request"])
    if conversation is not None:
        return conversation.decode() or None
    if request is None:
        return None
    return TurnRequest.model_validate_json(unpack_json(request)).conversation_id


async def load_conversation(redis: Redis, conversation_id: str) -> dict[str, Any] | None:
    """The stored conversation: the object the API returns, plus its `project` (which the API strips)."""
    raw = await redis.get(keys.conversation(conversation_id))
    return json.loads(raw) if raw else None


async def conversation_project(redis: Redis, conversation_id: str) -> str | None:
    """The project a conversation belongs to, or None if there is no such conversation."""
    conversation = await load_conversation(redis, conversation_id)
    return None if conversation is None else conversation.get("project", DEFAULT_PROJECT)


async def conversation_items(redis: Redis, conversation_id: str, start: int = 0, end: int = -1) -> list[Item]:
    return [json.loads(raw) for raw in await redis.lrange(keys.conversation_items(conversation_id), start, end)]


async def response_chain_items(
    redis: Redis, response_id: str, max_depth: int, project: str = DEFAULT_PROJECT
) -> list[Item]:
    """The context a `previous_response_id` carries: every earlier turn's input and output, oldest first.

    The chain ends at a response of another project: a turn never reads history its project does not own.
    """
    turns: list[list[Item]] = []
    current: str | None = response_id
    while current and len(turns) < max_depth:
        record = await load_response(redis, current)
        if record is None or record.request.project != project:
            break
        turns.append(record.request.input + list(record.response.get("output") or []))
        current = record.request.previous_response_id
    return [item for turn in reversed(turns) for item in turn]
