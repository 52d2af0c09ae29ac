"""WebSocket mode on /v1/responses: one socket carries many turns (the spec's `x-openresponses-websocket`).

The client sends `{"type": "response.create", ...}` messages whose other fields are a create body minus
`stream`, `stream_options` and `background`; the server answers each with the same events SSE carries,
one JSON text message per event. Every event sent here also carries `response_id` (an optional field the
spec allows implementations to add), because turns on different conversations run concurrently on one
socket and a delta event alone does not say which response it belongs to. A create that is refused gets
the spec's WebSocket error event `{"type": "error", "status", "error": {...}}` instead of
`response.created`; creates are handled in the order they arrive, so the n-th answer is for the n-th create.

Turns stay detached from the socket: one that drops mid-turn does not stop them, and the client resumes
with `GET /v1/responses/{id}?stream=true&starting_after=N`, N the last `sequence_number` it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from redis.exceptions import RedisError

from api.auth import Caller, CallerDep
from api.deps import Services
from api.errors import APIError, from_validation, invalid
from api.json_body import decode
from api.schemas import CreateResponseBody
from api.turns import accept, build_request
from shared.events import StreamEvent

log = logging.getLogger(__name__)

router = APIRouter(tags=["responses"])

CREATE = "response.create"
# HTTP-only fields the spec forbids in a WebSocket response.create: every turn streams over the socket.
_HTTP_ONLY = ("stream", "stream_options", "background")


@router.websocket("/v1/responses")
async def responses_socket(websocket: WebSocket, caller: CallerDep) -> None:
    """Run turns over one WebSocket: response.create in, the turn's events out."""
    # The key was checked on the handshake (a missing or wrong one never gets a socket); every turn
    # created over the socket belongs to its project and takes a slot of its concurrency limit.
    await websocket.accept()
    await _Session(websocket, websocket.app.state.services, caller).serve()


class _Session:
    def __init__(self, websocket: WebSocket, svc: Services, caller: Caller) -> None:
        self.websocket = websocket
        self.svc = svc
        self.caller = caller
        self.send_lock = asyncio.Lock()  # concurrent turns share the socket; a frame is sent whole
        self.forwarders: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                if raw is None:
                    raw = (message.get("bytes") or b"").decode("utf-8", errors="replace")
                await self._handle(raw)
        except WebSocketDisconnect:
            pass
        finally:
            # The turns themselves run on; only their forwarding to this socket stops.
            for task in self.forwarders:
                task.cancel()
            await asyncio.gather(*self.forwarders, return_exceptions=True)

    async def _handle(self, raw: str) -> None:
        try:
            response_id, written = await self._create(raw)
        except APIError as exc:
            await self._send_error(exc)
            return
        except RedisError:
            await self._send_error(
                APIError(503, "The service's store is unreachable; retry shortly.", type="server_error",
                         code="service_unavailable")
            )
            return
        except Exception:
            log.exception("response.create over a WebSocket failed")
            await self._send_error(APIError(500, "Internal server error.", type="server_error", code="server_error"))
            return
        started = asyncio.Event()
        task = asyncio.create_task(self._forward(response_id, written, started))
        self.forwarders.add(task)
        task.add_done_callback(self.forwarders.discard)
        # This create's response.created goes out before anything about the next message (an error, say),
        # so answers keep the order of the creates.
        waiter = asyncio.create_task(started.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _create(self, raw: str) -> tuple[str, list[StreamEvent]]:
        limit = self.svc.settings.max_input_bytes
        if len(raw.encode()) > limit:
            raise APIError(413, f"Message exceeds the limit of {limit} bytes.", param="input", code="too_large")
        # The same strict decoding as every HTTP body: standard JSON only, nesting bounded.
        message = decode(raw.encode(), self.svc.settings.max_json_depth)
        if not isinstance(message, dict):
            raise invalid("The message must be a JSON object.")
        if message.get("type") != CREATE:
            raise invalid(
                f"Unsupported message type {message.get('type')!r}: send '{CREATE}'.", "type", "unknown_event_type"
            )
        for field in _HTTP_ONLY:
            if field in message:
                raise invalid(f"'{field}' is not allowed in WebSocket mode: every turn streams.", field)
        body = {k: v for k, v in message.items() if k != "type"}
        try:
            parsed = CreateResponseBody.model_validate(body)
        except ValidationError as exc:
            raise from_validation(exc) from None
        req = await build_request(self.svc, parsed, self.caller)
        return req.response_id, (await accept(self.svc, req, self.caller)).written

    async def _forward(self, response_id: str, written: list[StreamEvent], started: asyncio.Event) -> None:
        try:
            async for event in self.svc.fanout.events(response_id, written=written):
                await self._send(_tagged(event, response_id))
                started.set()
        except (WebSocketDisconnect, RuntimeError):
            pass  # the socket went away while sending; the turn is unaffected
        except Exception:
            log.exception("forwarding %s over a WebSocket failed", response_id)
            with contextlib.suppress(Exception):
                await self._send_error(APIError(500, f"Lost the event stream of {response_id}; resume it over SSE.",
                                                type="server_error", code="server_error"))

    async def _send_error(self, exc: APIError) -> None:
        error: dict[str, Any] = {
            "type": exc.type,
            "code": exc.code or exc.type,
            "message": exc.message,
            "param": exc.param,
        }
        await self._send(json.dumps({"type": "error", "status": exc.status, "error": error}))

    async def _send(self, text: str) -> None:
        async with self.send_lock:
            await self.websocket.send_text(text)


def _tagged(event: StreamEvent, response_id: str) -> str:
    # The stored JSON always starts with '{"sequence_number":', so the id is spliced in without re-encoding.
    return '{"response_id":' + json.dumps(response_id) + "," + event.data[1:]
