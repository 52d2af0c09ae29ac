"""/v1/responses: create a turn, read it, stream it (resumable), cancel it, delete it."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response

from api.deps import Services, ServicesDep
from api.errors import invalid, not_found
from api.json_body import JSONBodyRoute
from api.listing import Page, paginate
from api.schemas import CreateResponseBody
from api.sse import sse_response
from api.turns import accept, build_request
from shared import events, ids, keys
from shared.events import MAX_SEQUENCE_NUMBER, StreamEvent
from shared.models import Status, TurnOutcome
from shared.projects import project_of
from shared.records import ResponseRecord, load_response
from shared.response_object import build_response

router = APIRouter(prefix="/v1/responses", tags=["responses"], route_class=JSONBodyRoute)

_CANCEL_WAIT_S = 2.0  # cancel answers with the final Response when the worker stops within this
_SEQUENCE_NUMBER = re.compile(r"-?[0-9]+")


@router.post("")
async def create_response(body: CreateResponseBody, svc: ServicesDep) -> Response:
    """Create a model response (runs on a worker; returns at once, streams, or waits)."""
    req = await build_request(svc, body)
    queued = await accept(svc, req)
    if body.stream:
        return sse_response(svc.fanout.events(req.response_id), svc.settings.sse_keepalive_s)
    if body.background:
        return Response(queued, media_type="application/json")
    return JSONResponse(await _wait_final(svc, req.response_id, svc.settings.sync_wait_timeout_s))


@router.get("/{response_id}")
async def get_response(
    response_id: str,
    svc: ServicesDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1, le=MAX_SEQUENCE_NUMBER)] = None,
    include_obfuscation: bool | None = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """Retrieve a response, or with stream=true replay its events after `starting_after` and follow them."""
    record = await _record(svc, response_id)
    if not stream:
        return JSONResponse(record.response)
    if starting_after is not None:
        after, param = starting_after, "starting_after"
    else:
        after, param = _last_event_id(last_event_id), "Last-Event-ID"
    # Past the newest event would wait for a sequence number that is never written: refuse it up front.
    last_seq = int(await svc.redis.hget(keys.response(response_id), "seq") or -1)
    if after > last_seq:
        raise invalid(f"'{param}' is {after}, past this response's last event ({last_seq}).", param)
    return sse_response(_resumed(svc, record, response_id, after, last_seq), svc.settings.sse_keepalive_s)


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
            project=project_of(record.request),
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


def _last_event_id(header: str | None) -> int:
    if header is None:
        return -1
    # int() would also take " 7", "+7", "1_0" and other scripts' digits.
    if not _SEQUENCE_NUMBER.fullmatch(header) or not -1 <= int(header) <= MAX_SEQUENCE_NUMBER:
        raise invalid(
            f"Last-Event-ID must be an event sequence number from -1 to {MAX_SEQUENCE_NUMBER}.", "Last-Event-ID"
        )
    return int(header)


async def _record(svc: Services, response_id: str) -> ResponseRecord:
    """A response as clients may see it: a malformed id, or a store=false response, is not found."""
    record = await load_response(svc.redis, response_id) if ids.is_id(response_id, ids.RESPONSE) else None
    if record is None or not record.request.store:
        raise not_found("Response", response_id)
    return record


async def _resumed(
    svc: Services, record: ResponseRecord, response_id: str, after: int, last_seq: int
) -> AsyncIterator[StreamEvent]:
    if record.status.terminal and not await svc.redis.exists(keys.events(response_id)):
        # The stream outlived its TTL but the response did not: end it with the stored final state.
        if last_seq > after:
            terminal = events.lifecycle(events.TERMINAL_TYPE_FOR_STATUS[record.status.value], record.response)
            yield StreamEvent(last_seq, terminal["type"], 0, json.dumps({**terminal, "sequence_number": last_seq}))
        return
    async for event in svc.fanout.events(response_id, after):
        yield event


async def _wait_final(svc: Services, response_id: str, timeout_s: float) -> dict[str, Any]:
    try:
        async with asyncio.timeout(timeout_s):
            async for event in svc.fanout.events(response_id):
                if event.terminal:
                    break
    except TimeoutError:
        pass
    # The creating request reads its own turn even when store=false hides it from everyone else.
    record = await load_response(svc.redis, response_id)
    if record is None:
        raise not_found("Response", response_id)
    return record.response
