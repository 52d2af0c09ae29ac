"""Server-sent events of a response: replayed from any point, then live, with keep-alives.

Keep-alives are lone comment lines (": keep-alive") with no blank line after them: a comment followed by a
blank line makes some SSE parsers, the openai SDK's among them, dispatch an empty event (the last event id
is still set) and fail to decode it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from shared import metrics
from shared.events import StreamEvent

# Proxies (nginx) buffer responses unless told not to, which would hold tokens back.
SSE_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache", "Connection": "keep-alive"}
KEEPALIVE = b": keep-alive\n"


def frame(event: StreamEvent) -> bytes:
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event.data}\n\n".encode()


async def with_keepalives(events: AsyncIterator[StreamEvent], keepalive_s: float) -> AsyncIterator[bytes]:
    pending: asyncio.Future[StreamEvent] | None = None
    metrics.sse_stream_opened()
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                yield KEEPALIVE
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield frame(event)
    finally:
        metrics.sse_stream_closed()
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def sse_response(events: AsyncIterator[StreamEvent], keepalive_s: float) -> StreamingResponse:
    return StreamingResponse(
        with_keepalives(events, keepalive_s), media_type="text/event-stream", headers=SSE_HEADERS
    )
