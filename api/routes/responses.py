"""/v1/responses: create a turn, read it, stream it (resumable), cancel it, delete it."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from api.deps import Services, ServicesDep
from api.errors import APIError, from_validation, invalid, not_found
from api.listing import Page, paginate
from api.schemas import CreateResponseBody
from api.sse import SSEResponse, ensure_capacity
from api.turns import accept, build_request
from shared import keys
from shared.models import Status, TurnOutcome
from shared.records import ResponseRecord, load_response
from shared.response_object import build_response

router = APIRouter(prefix="/v1/responses", tags=["responses"])

_CANCEL_WAIT_S = 2.0  # cancel answers with the final Response when the worker stops within this


@router.post("")
async def create_response(request: Request, svc: ServicesDep) -> Response:
    """Create a model response (runs on a worker; returns at once, streams, or waits)."""
    body = await _read_body(request, svc.settings.max_input_bytes)
    if body.stream:
        ensure_capacity(svc.fanout)
    req = await build_request(svc, body)
    queued = await accept(svc, req)
    if body.stream:
        return SSEResponse(svc.fanout, req.response_id)
    if body.background:
        return JSONResponse(queued)
    return JSONResponse(await _wait_final(svc, req.response_id, svc.settings.sync_wait_timeout_s))


@router.get("/{response_id}")
async def get_response(
    response_id: str,
    svc: ServicesDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
    include_obfuscation: bool | None = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """Retrieve a response, or with stream=true replay its events after `starting_after` and follow them."""
    record = await _record(svc, response_id)
    if not stream:
        return JSONResponse(record.response)
    after = starting_after if starting_after is not None else _last_event_id(last_event_id)
    ensure_capacity(svc.fanout)
    return SSEResponse(svc.fanout, response_id, after)


@router.post("/{response_id}/cancel")
async def cancel_response(response_id: str, svc: ServicesDep) -> dict[str, Any]:
    """Cancel a response; idempotent, honoured before pickup, and returns the Response."""
    record = await _record(svc, response_id)
    if record.status == Status.QUEUED:
        cancelled = build_response(record.request, Status.CANCELLED, TurnOutcome(status=Status.CANCELLED))
        if await svc.state.finish(
            response_id,
            expect=Status.QUEUED,
            attempt=None,
            final=Status.CANCELLED,
            response=cancelled,
            conversation_id=record.request.conversation_id,
            items=[],
        ):
            return cancelled
    if not record.status.terminal:
        await svc.redis.hset(keys.response(response_id), "cancel", "1")
        await svc.redis.publish(keys.CANCEL_CHANNEL, response_id)
        return await _wait_final(svc, response_id, _CANCEL_WAIT_S)
    return record.response


@router.delete("/{response_id}")
async def delete_response(response_id: str, svc: ServicesDep) -> dict[str, Any]:
    """Delete a stored response; a running turn is cancelled and its writes are refused from then on."""
    record = await _record(svc, response_id)
    if not record.status.terminal:
        await svc.redis.publish(keys.CANCEL_CHANNEL, response_id)
    await svc.redis.delete(keys.response(response_id), keys.events(response_id))
    if record.request.conversation_id and not record.status.terminal:
        await svc.redis.lrem(keys.conversation_turns(record.request.conversation_id), 0, response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    svc: ServicesDep,
    page: Page,
) -> dict[str, Any]:
    """List the input items of a response."""
    record = await _record(svc, response_id)
    return paginate(record.request.input, page)


# --- helpers ----------------------------------------------------------------------------------


async def _read_body(request: Request, max_bytes: int) -> CreateResponseBody:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise _too_large(max_bytes)
    try:
        data = json.loads(raw)
    except ValueError:
        raise invalid("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    try:
        return CreateResponseBody.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"Request body exceeds the limit of {max_bytes} bytes.", param="input", code="too_large")


def _last_event_id(header: str | None) -> int:
    if header is None:
        return -1
    try:
        return int(header)
    except ValueError:
        raise invalid("Last-Event-ID must be an event sequence number.", "Last-Event-ID") from None


async def _record(svc: Services, response_id: str) -> ResponseRecord:
    record = await load_response(svc.redis, response_id)
    if record is None:
        raise not_found("Response", response_id)
    return record


async def _wait_final(svc: Services, response_id: str, timeout_s: float) -> dict[str, Any]:
    try:
        async with asyncio.timeout(timeout_s):
            async for event in svc.fanout.events(response_id):
                if event.terminal:
                    break
    except TimeoutError:
        pass
    record = await _record(svc, response_id)
    return record.response
