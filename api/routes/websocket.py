"""WebSocket mode on /v1/responses, as the Open Responses standard's WebSocket section words it.

The client sends `{"type": "response.create", ...}` messages whose other fields are a create body minus
`stream`, `stream_options` and `background`; the server answers each with the same events SSE carries, one
JSON text message per event. A socket runs one response at a time: creates sent while one is in flight
wait in the socket's queue and run one after the other, so every event of a response arrives before any
of the next (parallel runs use more sockets). A create that is refused gets the spec's WebSocket error
event `{"type": "error", "status", "error": {...}}` in its place, so the n-th answer is for the n-th create.
Every event also carries `response_id`, an optional field the spec lets implementations add.

`{"type": "response.cancel"}` cancels the response in flight (store:false too: the socket created it) and
drops the creates still waiting, each answered in its turn with a `cancelled` error event.

The socket remembers its latest response for `previous_response_id` (api/continuation.py). A socket older
than TURNSTREAM_WEBSOCKET_MAX_CONNECTION_S gets `websocket_connection_limit_reached` once its in-flight
response has ended, and is closed; creates still waiting then are not run.

Turns stay detached from the socket: one that drops mid-turn does not stop the turn in flight, and the
client resumes it with `GET /v1/responses/{id}?stream=true&starting_after=N`. A create sent with
`cancel_on_disconnect: true` opts out: when the socket closes before that response's terminal event, it is
cancelled after the same grace as a streamed HTTP create (api/disconnect.py), unless the client resumes it
with `starting_after`/Last-Event-ID in the meantime. Creates still waiting in the socket's queue when it
closes are never run, opted in or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from redis.exceptions import RedisError

from api.auth import Caller, CallerDep
from api.cancel import cancel
from api.continuation import Remembered, remember
from api.deps import Services
from api.errors import APIError, from_validation, invalid, store_unavailable
from api.json_body import decode
from api.schemas import CreateResponseBody
from api.turns import accept, build_request
from shared import response_record
from shared.events import StreamEvent
from shared.models import Status, TurnRequest

log = logging.getLogger(__name__)

router = APIRouter(tags=["responses"])

CREATE = "response.create"
CANCEL = "response.cancel"
# HTTP-only fields the spec forbids in a WebSocket response.create: every turn streams.
_HTTP_ONLY = ("stream", "stream_options", "background")
_NORMAL_CLOSURE = 1000


@router.websocket("/v1/responses")
async def responses_socket(websocket: WebSocket, caller: CallerDep) -> None:
    """Run turns over one WebSocket, one at a time: response.create in, the turn's events out."""
    # The key was checked on the handshake (a missing or wrong one never gets a socket); every turn
    # created over the socket belongs to its project and takes a slot of its concurrency limit.
    await websocket.accept()
    await _Session(websocket, websocket.app.state.services, caller).serve()


@dataclass(frozen=True)
class _Create:
    index: int  # the create's place among the socket's creates, from 0
    message: dict[str, Any] | APIError  # decoded, or why it could not be


class _Session:
    def __init__(self, websocket: WebSocket, svc: Services, caller: Caller) -> None:
        self.websocket = websocket
        self.svc = svc
        self.caller = caller
        self.send_lock = asyncio.Lock()  # the reader's out-of-turn refusals share the socket with the runner
        self.waiting: asyncio.Queue[_Create | None] = asyncio.Queue()  # None: the client went away
        self.received = 0
        self.cancel_before = 0  # creates with a lower index that have not started are dropped
        self.latest: Remembered | None = None
        self.closed = False
        self.in_flight: str | None = None  # the response whose events the socket is sending
        # The opted-in (cancel_on_disconnect) response whose terminal event the client has not been sent yet.
        self.watched: str | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.svc.settings.websocket_max_connection_s
        reader = asyncio.create_task(self._read())
        try:
            if await self._run_queue(deadline):
                limit = self.svc.settings.websocket_max_connection_s
                await self._send_error(APIError(
                    400, f"This WebSocket reached its connection limit of {limit:g} s; open a new one to go on.",
                    code="websocket_connection_limit_reached",
                ))
                await self.websocket.close(_NORMAL_CLOSURE)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the socket went away while sending; the turn in flight is unaffected
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self) -> None:
        """Takes every message off the socket as it arrives, so a cancel is seen while a turn runs."""
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                if raw is None:
                    raw = (message.get("bytes") or b"").decode("utf-8", errors="replace")
                await self._take(raw)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            # Here, not when a send fails: a turn quiet for a while (a slow tool) sends nothing to fail.
            self.closed = True
            self._client_gone()
            self.waiting.put_nowait(None)

    def _watch(self, response_id: str) -> None:
        self.watched = response_id
        if self.closed:
            self._client_gone()  # it closed while the create was being accepted

    def _client_gone(self) -> None:
        if self.watched is not None and self.svc.disconnects is not None:
            self.svc.disconnects.client_gone(self.watched)
        self.watched = None

    async def _take(self, raw: str) -> None:
        decoded = self._decode(raw)
        if isinstance(decoded, dict) and decoded.get("type") == CANCEL:
            self.cancel_before = self.received
            if self.in_flight is not None:
                await self._cancel(self.in_flight)
            return
        limit = self.svc.settings.websocket_max_queued_creates
        if self.waiting.qsize() >= limit:
            # Answered at once, out of turn: holding it would hold its bytes, which the limit is there to bound.
            await self._send_error(APIError(
                429, f"{limit} creates are already waiting on this WebSocket; send more once they have run, or "
                "open another socket to run responses in parallel.", type="requests", code="too_many_queued_creates",
            ))
            return
        self.waiting.put_nowait(_Create(self.received, decoded))
        self.received += 1

    async def _cancel(self, response_id: str) -> None:
        # The socket created it, so it may cancel it even when store:false hides it from the HTTP route.
        try:
            record = await response_record.load(self.svc.redis, response_id)
            if record is not None:
                await cancel(self.svc, record)
        except RedisError:
            await self._send_error(store_unavailable())

    def _decode(self, raw: str) -> dict[str, Any] | APIError:
        limit = self.svc.settings.max_input_bytes
        if len(raw.encode()) > limit:
            return APIError(413, f"Message exceeds the limit of {limit} bytes.", param="input", code="too_large")
        try:
            # The same strict decoding as every HTTP body: standard JSON only, nesting bounded.
            message = decode(raw.encode(), self.svc.settings.max_json_depth)
        except APIError as exc:
            return exc
        if not isinstance(message, dict):
            return invalid("The message must be a JSON object.")
        return message

    async def _run_queue(self, deadline: float) -> bool:
        """Runs the waiting creates one at a time; True once the socket is past its age limit."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                async with asyncio.timeout_at(deadline):
                    create = await self.waiting.get()
            except TimeoutError:
                return True
            if create is None or self.closed:
                return False  # creates still waiting when the client left are not run: nobody would watch
            if create.index < self.cancel_before:
                await self._send_error(APIError(
                    400, f"Cancelled by {CANCEL} before it started; nothing was run.", code="cancelled"
                ))
            else:
                await self._run(create)
        return True

    async def _run(self, create: _Create) -> None:
        """One create, from its message to its response's terminal event."""
        message = create.message
        previous = message.get("previous_response_id") if isinstance(message, dict) else None
        try:
            if isinstance(message, APIError):
                raise message
            body = self._body(message)
            req = await build_request(self.svc, body, self.caller, self.latest)
            accepted = await accept(self.svc, req, self.caller)
        except APIError as exc:
            self._evict(previous)
            await self._send_error(exc)
            return
        except RedisError:
            self._evict(previous)
            await self._send_error(store_unavailable())
            return
        except Exception:
            log.exception("response.create over a WebSocket failed")
            self._evict(previous)
            await self._send_error(APIError(500, "Internal server error.", type="server_error", code="server_error"))
            return
        self.in_flight = req.response_id
        if body.cancel_on_disconnect:
            self._watch(req.response_id)
        if create.index < self.cancel_before:
            await self._cancel(req.response_id)  # the cancel came while it was being accepted
        try:
            final = await self._forward(req.response_id, accepted.written)
        finally:
            self.in_flight = None
        self.watched = None  # its end was sent (or cannot be): a close from now on leaves it alone
        await self._settle(req, final)

    def _body(self, message: dict[str, Any]) -> CreateResponseBody:
        if message.get("type") != CREATE:
            raise invalid(
                f"Unsupported message type {message.get('type')!r}: send '{CREATE}' or '{CANCEL}'.", "type",
                "unknown_event_type",
            )
        for field in _HTTP_ONLY:
            if field in message:
                raise invalid(f"'{field}' is not allowed in WebSocket mode: every turn streams.", field)
        try:
            return CreateResponseBody.model_validate({k: v for k, v in message.items() if k != "type"})
        except ValidationError as exc:
            raise from_validation(exc) from None

    async def _forward(self, response_id: str, written: list[StreamEvent]) -> dict[str, Any] | None:
        """Sends the response's events through its terminal one; returns its final Response."""
        try:
            async for event in self.svc.fanout.events(response_id, written=written):
                await self._send(_tagged(event, response_id))
                if event.terminal:
                    final: dict[str, Any] = event.json()["response"]
                    return final
        except (WebSocketDisconnect, RuntimeError):
            raise
        except Exception:
            log.exception("forwarding %s over a WebSocket failed", response_id)
            await self._send_error(APIError(500, f"Lost the event stream of {response_id}; resume it over SSE.",
                                            type="server_error", code="server_error"))
        return None

    async def _settle(self, req: TurnRequest, final: dict[str, Any] | None) -> None:
        """Updates the connection-local state once a response has ended."""
        if final is None:
            return  # its end was not seen here: what it left is unknown, so nothing changes
        if final["status"] == Status.FAILED:
            # A failed continuation evicts what it continued, as the standard says; a cancelled or cut-off
            # one does not. A failed response is never remembered.
            self._evict(req.previous_response_id)
            return
        try:
            self.latest = await remember(self.svc, req, final)
        except RedisError:
            log.warning("could not read the chain under %s; the socket forgets it", req.response_id)
            self.latest = None

    def _evict(self, previous: Any) -> None:
        if self.latest is not None and previous == self.latest.response_id:
            self.latest = None

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
