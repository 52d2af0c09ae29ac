"""POST /v1/responses/compact: a context (input and/or a previous_response_id chain) summarised into one
`compaction` item, which the client sends back as input in place of that context.

The summary is written by the agent's model, so like any turn it runs on a worker: the request is stored
and queued as a turn that runs no agent loop, and this route waits for it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.auth import CallerDep
from api.continuation import is_stored_response
from api.deps import ServicesDep
from api.errors import APIError, invalid, previous_response_not_found
from api.json_body import JSONBodyRoute
from api.schemas import normalise_input
from api.turns import accept, agent_card, wait_final
from shared import ids, partitions
from shared.models import Status, TurnRequest, Usage

router = APIRouter(prefix="/v1/responses", tags=["responses"], route_class=JSONBodyRoute)


class CompactBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]] | None = None
    previous_response_id: str | None = None
    instructions: str | None = None
    prompt_cache_key: str | None = Field(default=None, max_length=64)


@router.post("/compact")
async def compact_response(body: CompactBody, svc: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """Compact a context into a compaction item (runs on a worker; waits for it)."""
    if body.input is None and body.previous_response_id is None:
        raise invalid("Send 'input', 'previous_response_id', or both: there is nothing to compact.", "input")
    await agent_card(svc, body.model)
    previous = body.previous_response_id
    # Another project's response (or a malformed id) is answered exactly as a missing one.
    if previous is not None and not await is_stored_response(svc, previous, caller.project):
        raise previous_response_not_found(previous)
    req = TurnRequest(
        response_id=ids.response_id(partitions.for_new()),
        model=body.model,
        instructions=body.instructions,
        input=normalise_input(body.input) if body.input is not None else [],
        previous_response_id=body.previous_response_id,
        prompt_cache_key=body.prompt_cache_key,
        truncation="disabled",  # the whole context is summarised, however long
        compact_only=True,
        project=caller.project,
        key_id=caller.key_id,
    )
    await accept(svc, req, caller)
    final = await wait_final(svc, req.response_id, svc.settings.sync_wait_timeout_s)
    if final.get("status") != Status.COMPLETED:
        message = (final.get("error") or {}).get("message") or f"compaction ended {final.get('status')}"
        raise APIError(500, message, type="server_error", code="server_error")
    return {
        "id": req.response_id,
        "object": "response.compaction",
        "created_at": req.created_at,
        "output": final["output"],
        "usage": final.get("usage") or Usage().to_openai(),
    }
