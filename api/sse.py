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

from shared.events import StreamEvent

# Proxies (nginx) buffer responses unless told not to, which would hold tokens back.
SSE_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache", "Connection": "keep-alive"}
KEEPALIVE = b": keep-alive\n"
DONE = b"data: [DONE]\n\n"


def frame(event: StreamEvent) -> bytes:
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event.data}\n\n".encode()


async def with_keepalives(events: AsyncIterator[StreamEvent], keepalive_s: float) -> AsyncIterator[bytes]:
    pending: asyncio.Future[StreamEvent] | None = None
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
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def ending_with_done(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The frames, then the literal `data: [DONE]` the Open Responses spec requires as the last frame.

    Sent only when the events end on their own (the terminal event went out, or a resume asked for what
    comes after it); a stream cut short by an error or a disconnect ends without it, so clients can tell.
    """
    try:
        async for chunk in frames:
            yield chunk
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()
    yield DONE


def sse_response(events: AsyncIterator[StreamEvent], keepalive_s: float) -> StreamingResponse:
    return StreamingResponse(
        ending_with_done(with_keepalives(events, keepalive_s)), media_type="text/event-stream", headers=SSE_HEADERS
    )
