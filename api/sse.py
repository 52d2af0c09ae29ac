"""Server-sent events of a response: each event's frame is encoded once and written to every client.

Keep-alives are lone comment lines (": keep-alive") with no blank line after them: a comment followed by a
blank line makes some SSE parsers, the openai SDK's among them, dispatch an empty event (the last event id
is still set) and fail to decode it. They come from the fan-out's one per-process ticker, not from a timer
per stream.

Two things need the connection itself, which ASGI does not give: the outermost ASGI layer
(`ExposeConnection`) puts it in the scope where the server has one to give (uvicorn's per-request `send`
is a method of its request cycle, which holds the transport and knows the body's framing).
- A client that stops reading fills its socket's buffers; once a write has been blocked for
  `TURNSTREAM_SSE_STALL_TIMEOUT_S` the connection is aborted (it can resume with Last-Event-ID). Closing
  instead would wait for the unsent data, forever if the client never reads.
- A live, caught-up stream is written by the fan-out reader straight to the transport, as HTTP chunks: per
  event and client that is one `write` instead of a task wake-up and a trip through the ASGI `send` chain
  (tests/benchmarks/fanout.py, 2,000 tails at 10k deliveries/s: 9.9 us of API CPU per delivery instead
  of 25.5, p99 lag 6.3 ms instead of 13.6). Everything else (replay, keep-alives, the terminal
  event, a client whose buffer is filling) goes through `send`, which keeps uvicorn's flow control.
Without a connection (another server), streams run entirely on `send` and cannot drop a stalled client.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import APIError, invalid
from shared import metrics
from shared.events import MAX_SEQUENCE_NUMBER, StreamEvent

if TYPE_CHECKING:
    from api.fanout import Fanout, Subscription

log = logging.getLogger(__name__)

# Proxies (nginx) buffer responses unless told not to, which would hold tokens back.
SSE_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache", "Connection": "keep-alive"}
KEEPALIVE = b": keep-alive\n"
# The Open Responses spec's terminal frame, after the terminal event of a stream that ended on its own.
DONE = b"data: [DONE]\n\n"
CONNECTION = "turnstream.connection"  # scope key under which ExposeConnection puts the server's request cycle
_RETRY_AFTER_S = 5
_SEQUENCE_NUMBER = re.compile(r"-?[0-9]+")
_WRITE_MAX = 65_536  # asyncio's default high-water mark: a server pauses the writer past it


@dataclass(frozen=True, slots=True)
class Frame:
    event: StreamEvent
    data: bytes  # the encoded SSE frame, shared by every client of the response


def encode(event: StreamEvent) -> bytes:
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event.data}\n\n".encode()


def http_chunk(frames: list[Frame]) -> bytes:
    """The frames as one HTTP/1.1 chunk (RFC 9112 7.1), for writing to a chunk-framed body directly."""
    data = frames[0].data if len(frames) == 1 else b"".join([frame.data for frame in frames])
    return b"%x\r\n%b\r\n" % (len(data), data)


def parse_last_event_id(header: str | None) -> int:
    """A Last-Event-ID header as the sequence number to resume after (-1, from the start, when absent)."""
    if header is None:
        return -1
    # int() would also take " 7", "+7", "1_0" and other scripts' digits.
    if not _SEQUENCE_NUMBER.fullmatch(header) or not -1 <= int(header) <= MAX_SEQUENCE_NUMBER:
        raise invalid(
            f"Last-Event-ID must be an event sequence number from -1 to {MAX_SEQUENCE_NUMBER}.", "Last-Event-ID"
        )
    return int(header)


def resume_after(
    starting_after: int | None, last_event_id: str | None, *, last: int, source: str, default: int = -1
) -> int:
    """Where a stream resumes: after `starting_after`, else after the Last-Event-ID header, else after `default`.
    A point past the newest event (`last`) would wait for a sequence number never written: refused up front,
    naming the `source` ("response", "conversation")."""
    if starting_after is not None:
        after, param = starting_after, "starting_after"
    elif last_event_id is not None:
        after, param = parse_last_event_id(last_event_id), "Last-Event-ID"
    else:
        return default
    if after > last:
        raise invalid(f"'{param}' is {after}, past this {source}'s last event ({last}).", param)
    return after


def ensure_capacity(fanout: Fanout) -> None:
    """Raises 503 when this process already serves its cap of SSE streams; call it before committing a turn."""
    if fanout.open_streams >= fanout.max_streams:
        raise APIError(
            503,
            f"This server is at its limit of {fanout.max_streams} open event streams; retry shortly.",
            type="server_error",
            code="too_many_streams",
            retry_after=_RETRY_AFTER_S,
        )


class SSEResponse(Response):
    """The response's events after `after_seq` as an SSE stream, ending after the terminal event."""

    media_type = "text/event-stream"

    def __init__(
        self,
        fanout: Fanout,
        response_id: str,
        after_seq: int = -1,
        written: list[StreamEvent] | None = None,
        on_client_gone: Callable[[str, int], None] | None = None,
    ) -> None:
        """`written`: the response's first events, as this process just wrote them (a create's own stream).
        `on_client_gone(response_id, last_seq)` is called when the stream ends before its end (the client
        left, stalled, or the response is gone): what cancel-on-disconnect hangs on."""
        self._on_client_gone = on_client_gone
        self.status_code = 200
        self.background = None
        self.init_headers(SSE_HEADERS)
        self._fanout = fanout
        self._subscription = fanout.subscribe(
            response_id, after_seq, [Frame(event, encode(event)) for event in written or ()]
        )
        fanout.open_streams += 1  # released when the stream ends; counted from here so the cap is exact
        metrics.sse_stream_opened()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self._subscription
        connection = scope.get(CONNECTION)
        if connection is not None:
            sub.on_stall = lambda: _abort(connection.transport, sub)
        listener = asyncio.create_task(_close_on_disconnect(receive, sub))
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            # Known once the headers are out: uvicorn chunk-frames a body of unknown length.
            if connection is not None and getattr(connection, "chunked_encoding", None) is True:
                sub.direct = connection.transport
            async for batch in sub:
                for body in _bodies(batch):
                    sub.sending_since = self._fanout.now()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    sub.sending_since = None
            # A stream cut short (client gone, stalled, response deleted) ends without [DONE], so clients can tell.
            await send({"type": "http.response.body", "body": DONE if sub.ended else b"", "more_body": False})
        finally:
            listener.cancel()
            if self._on_client_gone is not None and not sub.ended:
                self._on_client_gone(sub.response_id, sub.last_seq)
            await sub.aclose()
            self._fanout.open_streams -= 1
            metrics.sse_stream_closed()


def _bodies(batch: list[Frame]) -> list[bytes]:
    """The batch as few writes, each at most ~_WRITE_MAX: a server holds one write whole, reader or not."""
    if len(batch) == 1:
        return [batch[0].data]
    if not batch:
        return [KEEPALIVE]
    bodies: list[bytes] = []
    part: list[bytes] = []
    size = 0
    for frame in batch:
        part.append(frame.data)
        size += len(frame.data)
        if size >= _WRITE_MAX:
            bodies.append(b"".join(part))
            part, size = [], 0
    if part:
        bodies.append(b"".join(part))
    return bodies


async def _close_on_disconnect(receive: Receive, sub: Subscription) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    sub.close()


def _abort(transport: Any, sub: Subscription) -> None:
    if not transport.is_closing():
        log.info("dropping a stalled SSE client of %s after event %d", sub.response_id, sub.last_seq)
        metrics.slow_reader_disconnected()
    transport.abort()
    sub.close()


class ExposeConnection:
    """Outermost ASGI layer: puts the server's request cycle (with its transport) in the scope, if any."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = getattr(send, "__self__", None)
        if scope["type"] == "http" and hasattr(cycle, "transport"):
            scope[CONNECTION] = cycle
        await self.app(scope, receive, send)
