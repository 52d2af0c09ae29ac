"""Accepting a turn: validate the request, render everything it stores, then accept it in one script."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError

from api import request_options as options
from api.auth import Caller
from api.continuation import Remembered, previous_context
from api.deps import Services
from api.errors import APIError, invalid, no_live_workers, not_found
from api.idempotency import Claim, in_use
from api.schemas import CreateResponseBody, function_tools, normalise_input
from shared import events, ids, keys, metrics, partitions, response_record, tracing, webhooks
from shared.events import StreamEvent
from shared.logs import add_log_context
from shared.models import AgentCard, Status, TurnOutcome, TurnRequest
from shared.response_object import build_response
from shared.turn_accept import NewTurn, Refusal, Slot

log = logging.getLogger(__name__)


def response_ids(svc: Services, body: CreateResponseBody) -> Callable[[str], str]:
    """How a create's response id is made from its partition's digits. A create watched from its first event on
    (streamed, or waited for) takes an id whose stream the fan-out already reads (api/fanout.py); a background
    one takes a fresh id, since its `response.queued` would end that read for no one."""
    return ids.response_id if body.background else svc.fanout.response_id


async def build_request(
    svc: Services, body: CreateResponseBody, caller: Caller, remembered: Remembered | None = None
) -> TurnRequest:
    """The validated turn; `remembered` is a WebSocket's connection-local state (api/continuation.py)."""
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
    # project's object gets exactly the answer a missing one gets (the accept checks the conversation's),
    # and a malformed id is as absent as an unknown one: it never reaches Redis as part of a key.
    if conversation_id is not None and not ids.is_id(conversation_id, ids.CONVERSATION):
        raise not_found("Conversation", conversation_id, "conversation")
    previous = body.previous_response_id
    context = None
    if previous is not None:
        context = await previous_context(svc, previous, body.store is not False, caller.project, remembered)
    items = normalise_input(body.input)
    if len(items) > settings.max_input_items:
        raise invalid(f"'input' has {len(items)} items; the limit is {settings.max_input_items}.", "input")
    await check_approval_answers(svc, items, caller.project)
    tools = function_tools(body.tools)
    compact, compact_threshold = options.compaction(body.context_management)
    choice: str | dict[str, Any] = body.tool_choice or "auto"
    if isinstance(choice, dict) or choice == "required":
        # Only these forms name tools that must exist; the agent's own tools count too.
        server_tools = set(card.tools) if card else (set() if settings.allow_model_passthrough else None)
        choice = options.tool_choice(choice, {t["name"] for t in tools}, server_tools)
    return TurnRequest(
        response_id=response_ids(svc, body)(partitions.for_new(conversation_id)),  # its conversation's partition
        model=model,
        instructions=body.instructions,
        input=items,
        conversation_id=conversation_id,
        previous_response_id=body.previous_response_id,
        context=context,
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


async def check_approval_answers(svc: Services, items: list[dict[str, Any]], project: str) -> None:
    """Each `mcp_approval_response` must answer a request of this project that no turn has answered yet (a
    turn racing this one to answer it is settled by the worker: the tool runs at most once)."""
    for index, item in enumerate(items):
        if item["type"] != "mcp_approval_response":
            continue
        request_id, param = item["approval_request_id"], f"input[{index}].approval_request_id"
        owner, claimed = await svc.redis.hmget(keys.approval(request_id), ["project", "claimed"])
        if owner is None or owner.decode() != project:
            raise invalid(f"No approval request '{request_id}' is waiting for an answer.", param)
        if claimed is not None:
            raise invalid(f"Approval request '{request_id}' was already answered (or expired).", param,
                          "approval_already_answered")


async def agent_card(svc: Services, model: str) -> AgentCard | None:
    """The agent profile `model` names, as its worker published it; None for a passthrough model."""
    card = await svc.agents.card(model)
    if card is not None or svc.settings.allow_model_passthrough:
        return card
    published = await svc.agents.cards()
    # Before any worker has published its agents there is nothing to check against; the worker will.
    if published:
        names = ", ".join(sorted(published))
        raise invalid(
            f"The model '{model}' does not exist. Available models: {names}. To serve it, define an agent of that "
            "name in the workers' TURNSTREAM_AGENTS, or set TURNSTREAM_ALLOW_MODEL_PASSTHROUGH=true to send unknown "
            "models to the upstream as they are.",
            "model",
            "model_not_found",
        )
    return None


@dataclass(frozen=True)
class Accepted:
    response_json: str  # the queued Response, as stored
    written: list[StreamEvent]  # the events the accept wrote, as the stream holds them


async def accept(svc: Services, req: TurnRequest, caller: Caller, once: Claim | None = None) -> Accepted:
    """Accepts the queued turn: its record, `response.created` and its job, all in one script (one round
    trip; a turn its client waits for is first checked to have a live worker, a look that is usually cached).

    Everything it writes or returns is rendered before anything is stored: once a turn is accepted no
    error may follow, or a client retrying that error would run the turn twice.
    """
    add_log_context(response_id=req.response_id, conversation_id=req.conversation_id)
    turn = _render(req, svc.settings.conversation_feed_ttl_s)
    await require_live_worker(svc, req.background)
    # Keys off (or no key): no concurrent-turn slot to take.
    slot = Slot(caller.key_id, caller.max_concurrent) if svc.limiter and caller.key_id else None
    outcome = await svc.acceptor.accept(turn, slot, once.mark() if once is not None else None)
    if isinstance(outcome, Refusal):
        raise _refused(outcome, req, caller)
    if outcome.stopped:
        log.info("%s stopped %d turn(s) ahead of it (%s)", req.response_id, outcome.stopped, req.conversation_lock)
    metrics.TURNS_ACCEPTED.labels(req.model, req.project).inc()
    return Accepted(str(turn.record["response"]), turn.written())


async def require_live_worker(svc: Services, background: bool) -> None:
    """Refuses a turn whose client would wait for it while no worker is alive (api/live_workers.py); a
    background turn is queued all the same, to run when a worker comes."""
    if background or svc.workers is None or await svc.workers.any_alive():
        return
    settings = svc.settings
    raise no_live_workers(
        settings.queue_name,
        settings.worker_heartbeat_ttl_s,
        "; a background create (POST /v1/responses with \"background\": true) is queued until one comes",
    )


def _render(req: TurnRequest, feed_ttl_s: int) -> NewTurn:
    queued = build_response(req, Status.QUEUED)
    first = [events.lifecycle(events.CREATED, queued)]
    if req.background:
        # OpenAI's background streams announce the wait for a worker; so does the Open Responses spec.
        first.append(events.lifecycle(events.QUEUED, queued))
    try:
        response_json = json.dumps(queued, ensure_ascii=False, allow_nan=False)
        # Encoding is where a lone surrogate would fail, and the Redis client encodes every value it sends.
        response_json.encode()
        encoded = [(event["type"], events.encode(event)) for event in first]
        for _, body in encoded:
            body.encode()
        request_json = req.model_dump_json()
    except (ValueError, PydanticSerializationError) as exc:
        raise invalid(f"The request cannot be stored as standard JSON: {exc}.") from None
    # The worker's first event, written by the script that starts the turn: no round trip of its own.
    progress = events.encode(events.lifecycle(events.IN_PROGRESS, build_response(req, Status.IN_PROGRESS)))
    # What a later turn's `interrupt`/`rollback` accept stores if it stops this one before pickup.
    cancelled = build_response(req, Status.CANCELLED, TurnOutcome(status=Status.CANCELLED))
    stoppable: dict[str, str] = {}
    if req.conversation_id:
        stoppable = {
            "cancelled_json": events.encode(cancelled),
            "cancelled_hook": webhooks.outbox_entry(req.project, req.response_id, Status.CANCELLED, cancelled),
        }
    return NewTurn(
        response_id=req.response_id,
        project=req.project,
        conversation_id=req.conversation_id,
        conversation_lock=req.conversation_lock,
        record=response_record.new_record(
            req,
            response_json=response_json,
            request_json=request_json,
            progress=progress,
            feed_ttl_s=feed_ttl_s,
            **stoppable,
        ),
        first_events=encoded,
    )


def _refused(refusal: Refusal, req: TurnRequest, caller: Caller) -> APIError:
    if refusal is Refusal.CONVERSATION_NOT_FOUND:
        return not_found("Conversation", str(req.conversation_id), "conversation")
    if refusal is Refusal.CLAIM_LOST:
        return in_use()
    if refusal is Refusal.CONCURRENCY:
        return APIError(
            429,
            f"Too many concurrent turns for this API key: limit {caller.max_concurrent}. "
            "Retry when one of its turns has finished.",
            type="requests",
            code="concurrency_limit_exceeded",
            retry_after=1,
        )
    if refusal is Refusal.QUEUE_FULL:
        return APIError(
            503, "Too many queued turns; retry shortly.", type="server_error", code="queue_full", retry_after=5
        )
    return APIError(
        409,
        f"Conversation '{req.conversation_id}' already has a turn in progress.",
        param="conversation",
        code="conversation_locked",
    )


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
    record = await response_record.load(svc.redis, response_id)
    if record is None:
        raise not_found("Response", response_id)
    return record.response


