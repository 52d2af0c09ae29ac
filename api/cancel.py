"""Cancelling a turn from the API: the cancel route, a WebSocket's response.cancel, and a streamed create
whose client went away."""

from __future__ import annotations

from typing import Any

from api.deps import Services
from shared import response_record
from shared.models import Status, TurnOutcome
from shared.response_object import build_response
from shared.response_record import ResponseRecord


async def cancel(svc: Services, record: ResponseRecord) -> dict[str, Any] | None:
    """Cancels the turn without waiting for it. A queued one is finished here (it keeps nothing) and its
    cancelled Response returned; a finished one's Response is returned as it is; a running one is told to stop
    (its worker commits what it produced, its terminal event follows within a second) and None returned."""
    response_id = record.request.response_id
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
            project=record.request.project,
            key_id=record.request.key_id,
        ):
            return cancelled
        # Started (or finished) meanwhile: ask it to stop like any running turn; asking a finished one is a no-op.
    elif record.status.terminal:
        return record.response
    await response_record.request_cancel(svc.redis, response_id)
    return None
