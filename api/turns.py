"""Accepting a turn: validate references, claim the conversation, store the record, enqueue the job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError
from redis.asyncio.client import Pipeline

from api import request_options as options
from api.auth import Caller
from api.deps import Services
from api.errors import APIError, invalid, not_found
from api.schemas import CreateResponseBody, function_tools, normalise_input
from shared import events, ids, keys, metrics, tracing
from shared.logs import add_log_context
from shared.models import AgentCard, Status, TurnRequest
from shared.queue import enqueue_turn, queue_depth
from shared.rate_limits import turn_accounting
from shared.records import conversation_project, load_response, response_project
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
    card = await agent_card(svc, model)
    # Ownership is all the edge needs; the worker reads the history itself when the turn runs. Another
    # project's object gets exactly the answer a missing one gets, and a malformed id is as absent as an
    # unknown one: it never reaches Redis as part of a key.
    if conversation_id is not None and not (
        ids.is_id(conversation_id, ids.CONVERSATION)
        and await conversation_project(svc.redis, conversation_id) == caller.project
    ):
        raise not_found("Conversation", conversation_id, "conversation")
    previous = body.previous_response_id
    if previous is not None and not await is_stored_response(svc, previous, caller.project):
        raise not_found("Previous response", previous, "previous_response_id")
    items = normalise_input(body.input)
    if len(items) > settings.max_input_items:
        raise invalid(f"'input' has {len(items)} items; the limit is {settings.max_input_items}.", "input")
    tools = function_tools(body.tools)
    compact, compact_threshold = options.compaction(body.context_management)
    choice: str | dict[str, Any] = body.tool_choice or "auto"
    if isinstance(choice, dict) or choice == "required":
        # Only these forms name tools that must exist; the agent's own tools count too.
        server_tools = set(card.tools) if card else (set() if settings.allow_model_passthrough else None)
        choice = options.tool_choice(choice, {t["name"] for t in tools}, server_tools)
    return TurnRequest(
        response_id=ids.response_id(),
        model=model,
        instructions=body.instructions,
        input=items,
        conversation_id=conversation_id,
        previous_response_id=body.previous_response_id,
        tools=tools,
        tool_choice=choice,
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
        text=options.text_config(body.text),
        truncation=body.truncation or (card.truncation if card else "disabled"),
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        top_logprobs=options.top_logprobs(body.top_logprobs),
        reasoning=options.reasoning(body.reasoning),
        max_tool_calls=body.max_tool_calls,
        service_tier=body.service_tier,
        safety_identifier=body.safety_identifier,
        prompt_cache_key=body.prompt_cache_key,
        include=options.include(body.include),
        compact=compact,
        compact_threshold=compact_threshold,
        traceparent=tracing.current_traceparent(),
    )


async def is_stored_response(svc: Services, response_id: str, project: str) -> bool:
    """Whether `response_id` names a stored response of `project` that a new turn may build on."""
    if not ids.is_id(response_id, ids.RESPONSE) or await response_project(svc.redis, response_id) != project:
        return False
    request = await svc.redis.hget(keys.response(response_id), "request")
    # A store=false response is never a base for another turn, as with OpenAI.
    return request is not None and TurnRequest.model_validate_json(request).store


async def agent_card(svc: Services, model: str) -> AgentCard | None:
    """The agent profile `model` names, as its worker published it; None for a passthrough model."""
    raw = await svc.redis.hget(keys.AGENTS, model)
    if raw is not None:
        return AgentCard.model_validate_json(raw)
    if svc.settings.allow_model_passthrough:
        return None
    published = await svc.redis.hkeys(keys.AGENTS)
    # Before any worker has published its agents there is nothing to check against; the worker will.
    if published:
        names = ", ".join(sorted(n.decode() for n in published))
        raise invalid(
            f"The model '{model}' does not exist. Available models: {names}. To serve it, define an agent of that "
            "name in the workers' TURNSTREAM_AGENTS, or set TURNSTREAM_ALLOW_MODEL_PASSTHROUGH=true to send unknown "
            "models to the upstream as they are.",
            "model",
            "model_not_found",
        )
    return None


async def accept(svc: Services, req: TurnRequest, guard: StoreGuard | None = None) -> str:
    """Stores the queued turn and its `response.created` event, then enqueues it. Returns the Response JSON.

    Everything it writes or returns is rendered before anything is stored: once a turn is accepted no
    error may follow, or a client retrying that error would run the turn twice.
    """
    add_log_context(response_id=req.response_id, conversation_id=req.conversation_id)
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
        await _store_and_enqueue(svc, turn, guard)
    except BaseException:
        # Not accepted after all: release the conversation so the turns behind it are not stuck.
        if req.conversation_id:
            await _forget(svc, req)
        raise
    metrics.TURNS_ACCEPTED.labels(req.model, req.project).inc()
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


async def _store_and_enqueue(svc: Services, turn: _RenderedTurn, guard: StoreGuard | None) -> None:
    settings = svc.settings
    response_id = turn.req.response_id
    record = keys.response(response_id)
    async with svc.redis.pipeline(transaction=True) as pipe:
        if guard is not None:
            await guard(pipe)
        pipe.hset(
            record,
            mapping={
                "status": Status.QUEUED.value,
                "attempt": 0,
                "seq": -1,
                "request": turn.request_json,
                "response": turn.response_json,
                "progress": events.encode(events.lifecycle(events.IN_PROGRESS, build_response(turn.req, Status.IN_PROGRESS))),  # noqa: E501
                **turn_accounting(turn.req),
            },
        )
        # Full retention even for store=false: a turn queued behind a long backlog must not expire before it
        # runs. The worker shortens it when the turn ends.
        pipe.expire(record, settings.response_ttl_s)
        # Indexed until its commit, so the sweeper can find it if its job is ever lost.
        pipe.zadd(keys.ACTIVE_TURNS, {response_id: int(time.time() * 1000)})
        await pipe.execute()
    first = [events.lifecycle(events.CREATED, turn.response)]
    if turn.req.background:
        # OpenAI's background streams announce the wait for a worker; so does the Open Responses spec.
        first.append(events.lifecycle(events.QUEUED, turn.response))
    await svc.state.append(response_id, 0, first)
    await enqueue_turn(svc.redis, settings.queue_name, response_id)


async def wait_final(svc: Services, response_id: str, timeout_s: float) -> dict[str, Any]:
    """The turn's Response once it has ended, or as it stands after `timeout_s`.

    For the request that created the turn (or its idempotent replay), whose project was checked then: it
    reads its own turn even when store=false hides it from everyone else.
    """
    try:
        async with asyncio.timeout(timeout_s):
            async for event in svc.fanout.events(response_id):
                if event.terminal:
                    break
    except TimeoutError:
        pass
    record = await load_response(svc.redis, response_id)
    if record is None:
        raise not_found("Response", response_id)
    return record.response
