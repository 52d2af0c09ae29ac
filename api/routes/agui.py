"""/v1/agui/{model}: the AG-UI protocol (CopilotKit, Agent Framework's AGUIChatClient) over ordinary turns.

A run is a turn of the thread's conversation (api/agui_input.py): durable, cancellable, visible through
/v1/responses, and resumable. Its AG-UI events (api/agui_events.py) are encoded with ag-ui-protocol's
encoder, each frame after an `id:` line holding its response event's sequence number, so a client that
lost the connection re-attaches with `GET /v1/agui/{model}/runs/{runId}` and `Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Annotated

from ag_ui.encoder import EventEncoder
from fastapi import APIRouter, Header
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api import agui_input
from api.agui_events import RunTranslator
from api.agui_input import Held, RunInput
from api.auth import CallerDep
from api.deps import Services, ServicesDep
from api.errors import from_validation, invalid, not_found
from api.json_body import JSONBodyRoute
from api.schemas import CreateResponseBody
from api.sse import KEEPALIVE, SSE_HEADERS, Frame, encode, ensure_capacity, parse_last_event_id
from api.subscription import Subscription
from api.turns import accept, build_request, require_live_worker
from shared import conversation_record, keys, metrics, response_record
from shared.events import StreamEvent

router = APIRouter(prefix="/v1/agui", tags=["agui"], route_class=JSONBodyRoute)

_ENCODER = EventEncoder()
RESPONSE_ID_HEADER = "x-turnstream-response-id"


@router.post("/{model}")
async def run_agent(model: str, body: RunInput, svc: ServicesDep, caller: CallerDep) -> Response:
    """Run an agent on an AG-UI thread: the thread's conversation gets the new messages, the run streams."""
    ensure_capacity(svc.fanout)  # refused before anything is stored: the run would go unwatched
    run_key = keys.agui_run(caller.project, _digest(body.run_id))
    if (known := await _run(svc, run_key)) is not None:
        # The same runId again (a client retrying a lost answer): that run, from its start, not a second one.
        return AGUIStream(svc, known[0], RunTranslator(known[1], body.run_id))
    await require_live_worker(svc, background=False)  # before the thread's conversation is made
    conversation_id = await _thread(svc, caller.project, body.thread_id)
    held = Held.of(await conversation_record.items(svc.redis, conversation_id))
    items = agui_input.new_items(body, conversation_id, held)
    if not items:
        raise invalid(
            "Every message of this run is already in the thread; send at least one new message.", "messages"
        )
    try:
        create = CreateResponseBody(
            model=model,
            input=items,
            conversation=conversation_id,
            tools=agui_input.function_tools(body.tools) or None,
            instructions=agui_input.context_instructions(body.context),
            stream=True,
        )
    except ValidationError as exc:
        raise from_validation(exc) from None
    req = await build_request(svc, create, caller)
    mapping = json.dumps({"response_id": req.response_id, "thread_id": body.thread_id})
    if not await svc.redis.set(run_key, mapping, nx=True, ex=svc.settings.response_ttl_s):
        if (known := await _run(svc, run_key)) is not None:  # the same runId, accepted meanwhile
            return AGUIStream(svc, known[0], RunTranslator(known[1], body.run_id))
    try:
        accepted = await accept(svc, req, caller)
    except BaseException:
        await svc.redis.delete(run_key)  # a refused run leaves its runId free
        raise
    return AGUIStream(svc, req.response_id, RunTranslator(body.thread_id, body.run_id), written=accepted.written)


@router.get("/{model}/runs/{run_id}")
async def reattach(
    model: str,
    run_id: str,
    svc: ServicesDep,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """Re-attach to a run by its runId: its AG-UI events from the start, or after `Last-Event-ID`, then live."""
    known = await _run(svc, keys.agui_run(caller.project, _digest(run_id)))
    record = await response_record.load(svc.redis, known[0]) if known is not None else None
    if known is None or record is None or record.request.project != caller.project or record.request.model != model:
        raise not_found("Run", run_id)
    after = parse_last_event_id(last_event_id)
    last_seq = await response_record.last_seq(svc.redis, known[0])
    if after > last_seq:
        raise invalid(f"'Last-Event-ID' is {after}, past this run's last event ({last_seq}).", "Last-Event-ID")
    ensure_capacity(svc.fanout)
    return AGUIStream(svc, known[0], RunTranslator(known[1], run_id), after)


def _digest(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()


async def _run(svc: Services, run_key: str) -> tuple[str, str] | None:
    """(response id, thread id) of a run of the caller's project, if there is one."""
    raw = await svc.redis.get(run_key)
    if raw is None:
        return None
    known = json.loads(raw)
    return known["response_id"], known["thread_id"]


async def _thread(svc: Services, project: str, thread_id: str) -> str:
    """The thread's conversation, created on first use."""
    conversation_id = agui_input.thread_conversation_id(project, thread_id)
    conversation = {
        "id": conversation_id,
        "object": "conversation",
        "created_at": int(time.time()),
        # Metadata values are at most 512 characters (OpenAI's limit); a longer thread id is left out.
        "metadata": {"agui_thread_id": thread_id} if len(thread_id) <= 512 else {},
    }
    await conversation_record.create_if_absent(svc.redis, conversation, project, svc.settings.conversation_ttl_s)
    stored = await conversation_record.load(svc.redis, conversation_id)
    if stored is None or stored.get("project") != project:  # deleted meanwhile; another project's is impossible
        raise not_found("Thread", thread_id)
    return conversation_id


class AGUIStream(Response):
    """A run's AG-UI events after `after_seq` as SSE, ending after RUN_FINISHED or RUN_ERROR."""

    media_type = "text/event-stream"

    def __init__(
        self,
        svc: Services,
        response_id: str,
        translator: RunTranslator,
        after_seq: int = -1,
        written: list[StreamEvent] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        # The turn behind the run, for /v1/responses (retrieve, cancel, input items).
        self.init_headers({**SSE_HEADERS, RESPONSE_ID_HEADER: response_id})
        self._fanout = svc.fanout
        self._translator = translator
        self._after = after_seq
        # From the start whatever `after_seq` is: the translator needs the earlier events to know each item.
        self._subscription = svc.fanout.subscribe(response_id, -1, [Frame(e, encode(e)) for e in written or ()])
        svc.fanout.open_streams += 1  # released when the stream ends, as for every SSE stream (the cap)
        metrics.sse_stream_opened()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self._subscription
        listener = asyncio.create_task(_close_on_disconnect(receive, sub))
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for batch in sub:
                body = self._frames(batch) if batch else KEEPALIVE
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            listener.cancel()
            await sub.aclose()
            self._fanout.open_streams -= 1
            metrics.sse_stream_closed()

    def _frames(self, batch: list[Frame]) -> bytes:
        out = []
        for frame in batch:
            event = self._translator.translate(frame.event.json())
            if event is not None and frame.event.seq > self._after:
                out.append(f"id: {frame.event.seq}\n{_ENCODER.encode(event)}")
        return "".join(out).encode()


async def _close_on_disconnect(receive: Receive, sub: Subscription) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    sub.close()
