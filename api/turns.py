"""Accepting a turn: validate references, claim the conversation, store the record, enqueue the job."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from redis.asyncio.client import Pipeline

from api.auth import Caller
from api.deps import Services
from api.errors import APIError, invalid, not_found
from api.schemas import CreateResponseBody, function_tools, normalise_input
from shared import events, ids, keys
from shared.models import Status, TurnRequest
from shared.queue import enqueue_turn, queue_depth
from shared.rate_limits import turn_accounting
from shared.records import conversation_project, response_project
from shared.response_object import build_response

# Runs first in the transaction that stores a turn (api/idempotency.py), and may add to it.
StoreGuard = Callable[[Pipeline], Awaitable[None]]


async def build_request(svc: Services, body: CreateResponseBody, caller: Caller) -> TurnRequest:
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
    # Ownership is all the edge needs; the worker reads the history itself when the turn runs.
    # Another project's object gets exactly the answer a missing one gets.
    if conversation_id and await conversation_project(svc.redis, conversation_id) != caller.project:
        raise not_found("Conversation", conversation_id, "conversation")
    previous = body.previous_response_id
    if previous and await response_project(svc.redis, previous) != caller.project:
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
        project=caller.project,
        key_id=caller.key_id,
    )


async def _check_model(svc: Services, model: str) -> None:
    if svc.settings.allow_model_passthrough:
        return
    published = await svc.redis.hkeys(keys.AGENTS)
    # Before any worker has published its agents there is nothing to check against; the worker will.
    if published and model.encode() not in published:
        names = ", ".join(sorted(n.decode() for n in published))
        raise invalid(f"The model '{model}' does not exist. Available models: {names}.", "model", "model_not_found")


async def accept(svc: Services, req: TurnRequest, guard: StoreGuard | None = None) -> dict[str, object]:
    """Stores the queued turn and its `response.created` event, then enqueues it. Returns the Response."""
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
        return await _store_and_enqueue(svc, req, guard)
    except BaseException:
        # Not accepted after all: release the conversation so the turns behind it are not stuck.
        if req.conversation_id:
            await _forget(svc, req)
        raise


async def _forget(svc: Services, req: TurnRequest) -> None:
    assert req.conversation_id is not None
    try:
        await svc.redis.lrem(keys.conversation_turns(req.conversation_id), 0, req.response_id)
        await svc.redis.delete(keys.response(req.response_id), keys.events(req.response_id))
    except Exception:
        pass  # Redis is away; a waiting turn drops a head whose record is missing on its own


async def _store_and_enqueue(svc: Services, req: TurnRequest, guard: StoreGuard | None) -> dict[str, object]:
    settings = svc.settings
    queued = build_response(req, Status.QUEUED)
    ttl = settings.response_ttl_s if req.store else settings.unstored_response_ttl_s
    record = keys.response(req.response_id)
    async with svc.redis.pipeline(transaction=True) as pipe:
        if guard is not None:
            await guard(pipe)
        pipe.hset(
            record,
            mapping={
                "status": Status.QUEUED.value,
                "attempt": 0,
                "seq": -1,
                "request": req.model_dump_json(),
                "response": json.dumps(queued),
                **turn_accounting(req),
            },
        )
        pipe.expire(record, ttl)
        await pipe.execute()
    await svc.state.append(req.response_id, 0, [events.lifecycle(events.CREATED, queued)])
    await enqueue_turn(svc.redis, settings.queue_name, req.response_id)
    return queued
