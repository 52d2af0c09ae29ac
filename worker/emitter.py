"""Publishes a turn's events to its Redis stream, merging tiny deltas into fewer writes.

The first event after a quiet spell is written at once, so the first token shows no added lag; events
arriving within the next `window` are merged (consecutive text deltas become one delta) and written in
one round trip when the window closes. A model emitting a token per millisecond thus costs ~50 writes/s
instead of ~1000, and no event waits longer than the window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared import events
from shared.turn_state import TurnState
from worker.append_batcher import AppendBatcher
from worker.redis_retry import Outage

_MERGEABLE = ("response.output_text.delta", "response.function_call_arguments.delta")


class Emitter:
    def __init__(
        self,
        state: TurnState | AppendBatcher,
        response_id: str,
        attempt: int,
        window_s: float,
        on_cancel_requested: Callable[[], None],
        outage: Outage,
    ) -> None:
        self._state = state
        self._response_id = response_id
        self._attempt = attempt
        self._window = window_s
        self._on_cancel = on_cancel_requested
        self._outage = outage  # a write waits out a Redis outage: the events are the turn's durable record
        self._buffer: list[events.Event] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._last_flush = 0.0
        self._error: BaseException | None = None
        self.writes = 0

    async def emit(self, event: events.Event) -> None:
        if self._error is not None:
            raise self._error
        self._add(event)
        if self._timer is not None:
            return
        wait = self._last_flush + self._window - asyncio.get_running_loop().time()
        if wait <= 0:
            await self.flush()
        else:
            self._timer = asyncio.create_task(self._flush_later(wait))

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
        except Exception as exc:  # surfaced to the turn on its next emit or close
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
            if cancel:
                self._on_cancel()

    async def close(self) -> None:
        """Writes whatever is pending; the turn calls this before committing its terminal state."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._error is not None:
            raise self._error
        await self.flush()

    def discard(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buffer.clear()
