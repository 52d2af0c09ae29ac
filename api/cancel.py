"""Cancelling a turn from the API: the cancel route, and a streamed create whose client went away."""

from __future__ import annotations

from api.deps import Services
from shared import keys
from shared.models import Status, TurnOutcome
from shared.records import ResponseRecord
from shared.response_object import build_response


async def request_cancel(svc: Services, record: ResponseRecord) -> bool:
    """Cancels the turn without waiting for it: a queued one is finished here (it keeps nothing), a running
    one is told to stop (its worker commits what it produced). True once it is terminal already."""
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
        ):
            return True
    if record.status.terminal:
        return True
    await svc.redis.hset(keys.response(response_id), "cancel", "1")
    await svc.redis.publish(keys.CANCEL_CHANNEL, response_id)
    return False
