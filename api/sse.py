"""Server-sent events of a response: replayed from any point, then live, with keep-alives."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from shared.events import StreamEvent

# Proxies (nginx) buffer responses unless told not to, which would hold tokens back.
SSE_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}


def sse_response(events: AsyncIterator[StreamEvent], keepalive_s: float) -> EventSourceResponse:
    async def frames() -> AsyncIterator[ServerSentEvent]:
        async for event in events:
            yield ServerSentEvent(data=event.data, event=event.type, id=str(event.seq))

    # send_timeout drops a client that stopped reading instead of holding its buffers forever.
    return EventSourceResponse(frames(), ping=keepalive_s, headers=SSE_HEADERS, send_timeout=30)
