"""A queued turn's record as the API's accept writes it, for tests of what happens after the accept."""

from __future__ import annotations

import json

from arq.connections import ArqRedis

from shared import events, keys
from shared.models import Status, TurnRequest
from shared.response_object import build_response


def in_progress_json(req: TurnRequest) -> str:
    """The `response.in_progress` event the accept encodes for the start script to publish."""
    return events.encode(events.lifecycle(events.IN_PROGRESS, build_response(req, Status.IN_PROGRESS)))


async def store_queued(redis: ArqRedis, req: TurnRequest, *, current: bool) -> None:
    """Writes the record; `current=False` leaves out the fields an older API node did not write
    (`progress` and `conversation`), whose records a worker must still run."""
    record = {
        "status": Status.QUEUED.value,
        "attempt": 0,
        "seq": -1,
        "request": req.model_dump_json(),
        "response": json.dumps(build_response(req, Status.QUEUED)),
    }
    if current:
        record["progress"] = in_progress_json(req)
        record["conversation"] = req.conversation_id or ""
    await redis.hset(keys.response(req.response_id), mapping=record)
