"""Accepting a turn: validate references, claim the conversation, store the record, enqueue the job."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError

from api.deps import Services
from api.errors import APIError, invalid, not_found
from api.schemas import CreateResponseBody, function_tools, normalise_input
from shared import events, ids, keys, metrics, tracing
from shared.models import Status, TurnRequest
from shared.projects import project_of
from shared.queue import enqueue_turn, queue_depth
from shared.response_object import build_response


async def build_request(svc: Services, body: CreateResponseBody) -> TurnRequest:
    settings = svc.settings
    conversation_id = body.conversation_id
    if conversation_id and body.previous_response_id:
        raise invalid(
            "'conversation' and 'previous_response_id' are mutually exclusive; send one of them.",
            "previous_response_id",
            "mutually_exclusive_parameters",
        )
    if body.background and body.store is False:
        raise invalid("Background mode requires 'store' to be true.", "background")
    model = body.model or settings.default_model
    await _check_model(svc, model)
    # Existence is all the edge needs; the worker reads the history itself when the turn runs. A malformed
    # id is as absent as an unknown one, and never reaches Redis as part of a key.
    if conversation_id is not None and not (
        ids.is_id(conversation_id, ids.CONVERSATION) and await svc.redis.exists(keys.conversation(conversation_id))
    ):
        raise not_found("Conversation", conversation_id, "conversation")
    previous = body.previous_response_id
    if previous is not None and not await _is_stored_response(svc, previous):
        raise not_found("Previous response", previous, "previous_response_id")
    items = normalise_input(body.input)
    if len(items) > settings.max_input_items:
        raise invalid(f"'input' has {len(items)} items; the limit is {settings.max_input_items}.", "input")
    return TurnRequest(
        response_id=ids.response_id(),
        model=model,
        instructions=body.instructions,
        input=items,
        conversation_id=conversation_id,
        previous_response_id=body.previous_response_id,
        tools=function_tools(body.tools),
        tool_choice=body.tool_choice or "auto",
        parallel_tool_calls=True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        store=body.store is not False,
        background=bool(body.background),
        metadata=body.metadata or {},
        user=body.user,
        conversation_lock=body.conversation_lock,
        traceparent=tracing.current_traceparent(),
    )


async def _is_stored_response(svc: Services, response_id: str) -> bool:
    if not ids.is_id(response_id, ids.RESPONSE):
        return False
    request = await svc.redis.hget(keys.response(response_id), "request")
    # A store=false response is never a base for another turn, as with OpenAI.
    return request is not None and TurnRequest.model_validate_json(request).store


async def _check_model(svc: Services, model: str) -> None:
    if svc.settings.allow_model_passthrough:
        return
    published = await svc.redis.hkeys(keys.AGENTS)
    # Before any worker has published its agents there is nothing to check against; the worker will.
    if published and model.encode() not in published:
        names = ", ".join(sorted(n.decode() for n in published))
        raise invalid(f"The model '{model}' does not exist. Available models: {names}.", "model", "model_not_found")


async def accept(svc: Services, req: TurnRequest) -> str:
    """Stores the queued turn and its `response.created` event, then enqueues it. Returns the Response JSON.

    Everything it writes or returns is rendered before anything is stored: once a turn is accepted no
    error may follow, or a client retrying that error would run the turn twice.
    """
    turn = _render(req)
    settings = svc.settings
    if await queue_depth(svc.redis, settings.queue_name) >= settings.max_queue_depth:
        raise APIError(
            503, "Too many queued turns; retry shortly.", type="server_error", code="queue_full", retry_after=5
        )
    if req.conversation_id and not await svc.state.claim(req.conversation_id, req.response_id, req.conversation_lock):
        raise APIError(
            409,
            f"Conversation '{req.conversation_id}' already has a turn in progress.",
            param="conversation",
            code="conversation_locked",
        )
    try:
        await _store_and_enqueue(svc, turn)
    except BaseException:
        # Not accepted after all: release the conversation so the turns behind it are not stuck.
        if req.conversation_id:
            await _forget(svc, req)
        raise
    metrics.TURNS_ACCEPTED.labels(req.model, project_of(req)).inc()
    return turn.response_json


@dataclass(frozen=True)
class _RenderedTurn:
    req: TurnRequest
    request_json: str
    response: dict[str, Any]
    response_json: str  # the queued Response: stored, and what the client gets back


def _render(req: TurnRequest) -> _RenderedTurn:
    queued = build_response(req, Status.QUEUED)
    try:
        response_json = json.dumps(queued, ensure_ascii=False, allow_nan=False)
        # Encoding is where a lone surrogate would fail, and the Redis client encodes every value it sends.
        response_json.encode()
        events.encode(events.lifecycle(events.CREATED, queued)).encode()
        request_json = req.model_dump_json()
    except (ValueError, PydanticSerializationError) as exc:
        raise invalid(f"The request cannot be stored as standard JSON: {exc}.") from None
    return _RenderedTurn(req, request_json, queued, response_json)


async def _forget(svc: Services, req: TurnRequest) -> None:
    assert req.conversation_id is not None
    try:
        await svc.redis.lrem(keys.conversation_turns(req.conversation_id), 0, req.response_id)
        await svc.redis.delete(keys.response(req.response_id), keys.events(req.response_id))
    except Exception:
        pass  # Redis is away; a waiting turn drops a head whose record is missing on its own


async def _store_and_enqueue(svc: Services, turn: _RenderedTurn) -> None:
    settings = svc.settings
    response_id = turn.req.response_id
    record = keys.response(response_id)
    async with svc.redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            record,
            mapping={
                "status": Status.QUEUED.value,
                "attempt": 0,
                "seq": -1,
                "request": turn.request_json,
                "response": turn.response_json,
            },
        )
        # Full retention even for store=false: a turn queued behind a long backlog must not expire before it
        # runs. The worker shortens it when the turn ends.
        pipe.expire(record, settings.response_ttl_s)
        # Indexed until its commit, so the sweeper can find it if its job is ever lost.
        pipe.zadd(keys.ACTIVE_TURNS, {response_id: int(time.time() * 1000)})
        await pipe.execute()
    await svc.state.append(response_id, 0, [events.lifecycle(events.CREATED, turn.response)])
    await enqueue_turn(svc.redis, settings.queue_name, response_id)
