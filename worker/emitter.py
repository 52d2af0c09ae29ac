"""Publishes a turn's events to its Redis stream, merging tiny deltas into fewer writes.

The first event after a quiet spell is written at once, so the first token shows no added lag; events
arriving within the next `window` are merged (consecutive text deltas become one delta) and written in
one round trip when the window closes. A model emitting a token per millisecond thus costs ~50 writes/s
instead of ~1000, and no event waits longer than the window.

An item's opening events (`output_item.added`, `content_part.added`) are never written alone: they wait
for the item's first delta, and that delta goes out with them at once, in one write, whatever the window
says. Written alone, they would start a window that the first token then has to sit out. An item that
gets no delta (a tool result) has its opening written when the window closes.

An item's closing events (`*.done`) are not written at once after a quiet spell either: nobody waits for
them the way they wait for a first token, so they open a window instead. A turn mostly ends right after its
last item closes, and what is still pending then is not written here: the turn's commit takes it and
writes it with the terminal event, in the same round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared import events
from shared.turn_state import TurnState
from worker.append_batcher import AppendBatcher
from worker.redis_retry import Outage

_MERGEABLE = (*events.TEXT_DELTA_TYPES, "response.function_call_arguments.delta")
_OPENING = ("response.output_item.added", "response.content_part.added")
_CLOSING_SUFFIX = ".done"


class Emitter:
    def __init__(
        self,
        state: TurnState | AppendBatcher,
        response_id: str,
        attempt: int,
        window_s: float,
        on_cancel_requested: Callable[[], None],
        outage: Outage,
        *,
        keep_written: bool = False,
    ) -> None:
        """`keep_written`: record every event written, for `stream()`."""
        self._state = state
        self._response_id = response_id
        self._attempt = attempt
        self._window = window_s
        self._on_cancel = on_cancel_requested
        self._outage = outage  # a write waits out a Redis outage: the events are the turn's durable record
        self._buffer: list[events.Event] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._last_flush = float("-inf")  # loop time starts near 0 on a fresh host: no window has run yet
        self._opened: set[str] = set()  # items whose opening is written or buffered, awaiting a first delta
        self._error: BaseException | None = None
        self.writes = 0
        # Every event this emitter wrote, in order, when kept: with what the stream held before, the whole
        # stream, which the commit compacts (shared/turn_state.py). Only what Redis acknowledged is here.
        self._keep_written = keep_written
        self.written: list[events.Event] = []

    async def emit(self, event: events.Event) -> None:
        if self._error is not None:
            raise self._error
        self._add(event)
        kind = event["type"]
        if kind in _OPENING:
            self._opened.add(event["item"]["id"] if kind == "response.output_item.added" else event["item_id"])
            if self._timer is None:
                self._timer = asyncio.create_task(self._flush_later(self._window))
            return
        if kind in _MERGEABLE and event["item_id"] in self._opened:
            self._opened.discard(event["item_id"])
            self._cancel_timer()
            await self.flush()
            return
        if self._timer is not None:
            return
        wait = self._last_flush + self._window - asyncio.get_running_loop().time()
        if wait <= 0 and kind.endswith(_CLOSING_SUFFIX):
            wait = self._window
        if wait <= 0:
            await self.flush()
        else:
            self._timer = asyncio.create_task(self._flush_later(wait))

    def _cancel_timer(self) -> None:
        # Only a sleeping timer is ever cancelled: a timer that is writing has already cleared `_timer`.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _add(self, event: events.Event) -> None:
        last = self._buffer[-1] if self._buffer else None
        if (
            last is not None
            and event["type"] in _MERGEABLE
            and last["type"] == event["type"]
            and last["item_id"] == event["item_id"]
        ):
            last["delta"] += event["delta"]
        else:
            self._buffer.append(dict(event))

    async def _flush_later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timer = None
        try:
            await self.flush()
        except Exception as exc:  # surfaced to the turn on its next emit or take
            self._error = exc

    async def flush(self) -> None:
        async with self._lock:
            batch, self._buffer = self._buffer, []
            if not batch:
                return
            self._last_flush = asyncio.get_running_loop().time()
            self.writes += 1
            batch_id = f"{self._attempt}:{self.writes}"
            cancel = await self._outage.call(
                lambda: self._state.append(self._response_id, self._attempt, batch, batch_id), "event append"
            )
            if self._keep_written:
                self.written += batch
            if cancel:
                self._on_cancel()

    async def take(self) -> list[events.Event]:
        """Stops the emitter and hands over what it has not written, for the turn's commit to write with the
        terminal event. Raises what a timed write failed with, as the next emit would."""
        self._cancel_timer()
        # A write under way is waited for: its events come before the ones handed over.
        async with self._lock:
            if self._error is not None:
                raise self._error
            pending, self._buffer = self._buffer, []
        return pending

    def stream(self, before: list[events.StreamEvent]) -> list[events.StreamEvent]:
        """The stream as this attempt knows it: what it held `before` the first write, then what it wrote."""
        return [
            *before,
            *(
                events.StreamEvent(seq, event["type"], self._attempt, events.numbered(seq, events.encode(event)))
                for seq, event in enumerate(self.written, start=len(before))
            ),
        ]

    def discard(self) -> None:
        self._cancel_timer()
        self._buffer.clear()
