"""What a `previous_response_id` continues: a stored chain, or a WebSocket's connection-local state.

Over HTTP only a stored response of the caller's project is a base; the worker reads its chain from Redis.
A WebSocket also remembers its latest response in this API process's memory for the socket's life (the Open
Responses WebSocket section), and that memory is consulted first, before any Redis read. It is the only
way to continue a `store: false` response: the remembered items travel with the next turn's job
(`TurnRequest.context`), so nothing of an unstored turn outlives the store:false rules (its record and
stream lapse as ever, and the memory goes with the socket). Every id that cannot be used is answered
`previous_response_not_found` (400), whatever the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.deps import Services
from api.errors import previous_response_not_found
from shared import ids, response_record
from shared.models import Item, TurnRequest


@dataclass(frozen=True)
class Remembered:
    """A WebSocket's latest response, as a `previous_response_id` on that socket continues it."""

    response_id: str
    # A store:false response's whole context, oldest first (its history, input and output): what a
    # continuation carries. None for a stored response, whose chain the worker reads from Redis.
    context: list[Item] | None

    @property
    def stored(self) -> bool:
        return self.context is None


async def previous_context(
    svc: Services, previous: str, store: bool, project: str, remembered: Remembered | None = None
) -> list[Item] | None:
    """The context a turn continuing `previous` carries (None: the worker reads the stored chain).

    Raises previous_response_not_found when `previous` cannot be continued by this turn.
    """
    if remembered is not None and remembered.response_id == previous:
        if remembered.stored:
            return None  # ours, created on this socket: no need to ask Redis whose it is
        if store:
            # A stored turn would keep the unstored one's items for its whole retention.
            raise previous_response_not_found(
                previous, "It was created with store: false; only a store: false turn can continue it."
            )
        return remembered.context
    if not await is_stored_response(svc, previous, project):
        reason = "A store: false response can be continued only on the WebSocket that created it."
        raise previous_response_not_found(previous, reason)
    return None


async def is_stored_response(svc: Services, response_id: str, project: str) -> bool:
    """Whether `response_id` names a stored response of `project` that a new turn may build on."""
    # A malformed id is as absent as an unknown one: it never reaches Redis as part of a key.
    if not ids.is_id(response_id, ids.RESPONSE):
        return False
    # A store=false response is never a base for another turn over HTTP, as with OpenAI.
    return await response_record.is_base_for(svc.redis, response_id, project)


async def remember(svc: Services, req: TurnRequest, final: dict[str, Any]) -> Remembered:
    """The connection-local state after `req` ended as `final` (its terminal Response)."""
    if req.store:
        return Remembered(req.response_id, None)
    if req.context is not None:
        history = req.context
    elif req.previous_response_id:
        # An unstored turn continuing a stored chain: that chain is part of what a continuation carries.
        history = await response_record.chain_items(
            svc.redis, req.previous_response_id, response_record.WHOLE_CHAIN, req.project
        )
    else:
        history = []
    return Remembered(req.response_id, history + req.input + list(final.get("output") or []))
