"""Reading a response's event stream from Redis: replay from any point, then follow until the end.

`read_after` is what every reader starts with; `tail` adds a blocking follow and is what `turnstream tail`
and an out-of-process gateway use. The API's fan-out (api/fanout.py) reads the same entries a page at a
time plus one shared XREAD per process.

A finished turn's stream may be one compact entry holding every event (shared/stored_form.py), its entry
id that of the last event: a read after any earlier event returns it, and the reader keeps what follows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from redis.asyncio import Redis

from shared import keys
from shared.events import StreamEvent
from shared.stored_form import decode_entries

BATCH = 500


async def read_after(redis: Redis, response_id: str, after_seq: int) -> list[StreamEvent]:
    """Every stored event with sequence number > after_seq, in order."""
    out: list[StreamEvent] = []
    start = f"{after_seq + 1}-0"
    while True:
        entries = await redis.xrange(keys.events(response_id), min=start, max="+", count=BATCH)
        for _, fields in entries:
            out.extend(decode_entries(fields, out[-1].seq if out else after_seq))
        if len(entries) < BATCH:
            return out
        last_id = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0]
        start = "(" + last_id


async def tail(
    redis: Redis, response_id: str, after_seq: int = -1, block_ms: int = 5000
) -> AsyncIterator[StreamEvent]:
    """Yields events after `after_seq` as they arrive, ending after the terminal event.

    Holds one blocking read while following, so use it for a handful of readers, not one per client.
    """
    last = after_seq
    for event in await read_after(redis, response_id, last):
        yield event
        last = event.seq
        if event.terminal:
            return
    stream = keys.events(response_id)
    while True:
        reply = await redis.xread({stream: f"{last}-1" if last >= 0 else "0-0"}, block=block_ms, count=BATCH)
        for _, entries in reply or []:
            for _, fields in entries:
                for event in decode_entries(fields, last):
                    yield event
                    last = event.seq
                    if event.terminal:
                        return
