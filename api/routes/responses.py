"""/v1/responses: create a turn, read it, stream it (resumable), cancel it, delete it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response

from api import idempotency
from api.auth import Caller, CallerDep
from api.cancel import cancel
from api.deps import Services, ServicesDep
from api.errors import APIError, invalid, not_found
from api.idempotency import Claim, IdempotencyKey
from api.json_body import JSONBodyRoute
from api.listing import Page, paginate
from api.schemas import CreateResponseBody
from api.sse import SSEResponse, ensure_capacity, resume_after
from api.turns import Accepted, accept, build_request, response_ids, wait_final
from shared import ids, response_record
from shared.events import MAX_SEQUENCE_NUMBER
from shared.models import PROMPT_TOO_LONG, Status
from shared.response_record import ResponseRecord

router = APIRouter(prefix="/v1/responses", tags=["responses"], route_class=JSONBodyRoute)

_CANCEL_WAIT_S = 2.0  # cancel answers with the final Response when the worker stops within this


@router.post("")
async def create_response(
    body: CreateResponseBody, svc: ServicesDep, caller: CallerDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Create a model response (runs on a worker; returns at once, streams, or waits)."""
    if body.cancel_on_disconnect and not body.stream:
        raise invalid(
            "'cancel_on_disconnect' needs 'stream': true; only a streamed create has a client to lose.",
            "cancel_on_disconnect",
        )
    if body.stream:
        ensure_capacity(svc.fanout)  # refused before anything is stored: the turn would run unwatched
    once = None
    if idempotency_key is not None:
        conversation_id = body.conversation_id if ids.is_id(body.conversation_id, ids.CONVERSATION) else None
        once = await idempotency.claim(
            svc.redis, svc.settings.idempotency_ttl_s, caller.project, "responses", idempotency_key, body,
            response_ids(svc, body), conversation_id,
        )
        if once.replay:
            return await _replay(svc, body, once.object_id, caller.project)
    response_id, accepted = await _submit(svc, body, caller, once)
    if body.stream:
        gone = svc.disconnects.client_gone if body.cancel_on_disconnect and svc.disconnects else None
        return SSEResponse(svc.fanout, response_id, written=accepted.written, on_client_gone=gone)
    if body.background:
        return Response(accepted.response_json, media_type="application/json")
    final = await wait_final(svc, response_id, svc.settings.sync_wait_timeout_s)
    error = final.get("error") or {}
    if final["status"] == Status.FAILED and error.get("code") == PROMPT_TOO_LONG:
        # What OpenAI answers a plain create whose input does not fit: the turn is still stored, failed.
        raise APIError(400, error["message"], param="input", code="context_length_exceeded")
    return JSONResponse(final)


@router.get("/{response_id}")
async def get_response(
    response_id: str,
    svc: ServicesDep,
    caller: CallerDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1, le=MAX_SEQUENCE_NUMBER)] = None,
    include_obfuscation: bool | None = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """Retrieve a response, or with stream=true replay its events after `starting_after` and follow them."""
    record = await _record(svc, response_id, caller.project)
    if not stream:
        return JSONResponse(record.response)
    last_seq = await response_record.last_seq(svc.redis, response_id)
    after = resume_after(starting_after, last_event_id, last=last_seq, source="response")
    ensure_capacity(svc.fanout)
    gone = None
    if (starting_after is not None or last_event_id is not None) and svc.disconnects is not None:
        # A cancel-on-disconnect client resuming within its grace: this tail keeps its turn, and its duty.
        gone = svc.disconnects.client_gone if await svc.disconnects.reattached(response_id) else None
    return SSEResponse(svc.fanout, response_id, after, on_client_gone=gone)


@router.post("/{response_id}/cancel")
async def cancel_response(response_id: str, svc: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """Cancel a response; idempotent, honoured before pickup, and returns the Response."""
    record = await _record(svc, response_id, caller.project)
    final = await cancel(svc, record)
    if final is not None:
        return final
    return await wait_final(svc, response_id, _CANCEL_WAIT_S)


@router.delete("/{response_id}")
async def delete_response(response_id: str, svc: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """Delete a stored response; a running turn is cancelled and its writes are refused from then on."""
    record = await _record(svc, response_id, caller.project)
    await response_record.delete(svc.redis, response_id, record)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    svc: ServicesDep,
    caller: CallerDep,
    page: Page,
) -> dict[str, Any]:
    """List the input items of a response."""
    record = await _record(svc, response_id, caller.project)
    return paginate(record.request.input, page)


# --- helpers ----------------------------------------------------------------------------------


async def _submit(
    svc: Services, body: CreateResponseBody, caller: Caller, once: Claim | None
) -> tuple[str, Accepted]:
    """Validates and accepts the turn; frees the Idempotency-Key's claim if it is refused."""
    async with idempotency.settled(once):
        req = await build_request(svc, body, caller)
        if once is not None:
            req.response_id = once.object_id
        return req.response_id, await accept(svc, req, caller, once)


async def _replay(svc: Services, body: CreateResponseBody, response_id: str, project: str) -> Response:
    """A retried create answered as the first one was; a stream starts again from `response.created`."""
    # The creating request reads its own turn even when store=false hides it from everyone else.
    record = await _record(svc, response_id, project, unstored=True)
    if body.stream:
        return SSEResponse(svc.fanout, record.response["id"])
    if body.background:
        return JSONResponse(record.response)
    return JSONResponse(await wait_final(svc, response_id, svc.settings.sync_wait_timeout_s))


async def _record(svc: Services, response_id: str, project: str, *, unstored: bool = False) -> ResponseRecord:
    """A response as clients may see it: a malformed id, another project's response, or (unless `unstored`)
    a store=false response is answered exactly as a missing one."""
    record = await response_record.load(svc.redis, response_id) if ids.is_id(response_id, ids.RESPONSE) else None
    if record is None or record.request.project != project or not (unstored or record.request.store):
        raise not_found("Response", response_id)
    return record
