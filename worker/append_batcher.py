"""One pipeline per tick for the event writes of every turn a worker process runs.

Each turn's emitter already merges its own deltas; what is left at a realistic chunk spacing (a token
every ~20 ms) is one Redis round trip per turn per chunk, and a round trip costs ~120 µs of client CPU
here against ~20 µs when fifty share a pipeline. So writes made of deltas only wait for a short tick
(TURNSTREAM_APPEND_TICK_MS) and go out together with whatever the process's other turns wrote meanwhile.
Anything else (an item's opening with its first delta, an item's end, a lifecycle event) is written at
once: the first token and "calling X…" are never held back.
"""

from __future__ import annotations

import asyncio

from shared import events
from shared.turn_state import TurnState

_DELTAS = frozenset({*events.TEXT_DELTA_TYPES, "response.function_call_arguments.delta"})

_Write = tuple[str, int, list[events.Event], str]


class AppendBatcher:
    """Stands in for `TurnState.append` in every emitter of a worker process."""

    def __init__(self, state: TurnState, tick_s: float) -> None:
        self._state = state
        self._tick_s = tick_s
        self._pending: list[tuple[_Write, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, response_id: str, attempt: int, batch: list[events.Event], batch_id: str = "") -> bool:
        """Same contract as TurnState.append: the cancel flag, or StaleTurn / a connection error raised."""
        if self._tick_s <= 0 or any(event["type"] not in _DELTAS for event in batch):
            return await self._state.append(response_id, attempt, batch, batch_id)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(((response_id, attempt, batch, batch_id), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_after_tick())
        return await future

    async def _flush_after_tick(self) -> None:
        await asyncio.sleep(self._tick_s)
        pending, self._pending = self._pending, []
        self._flusher = None
        try:
            outcomes = await self._state.append_many([write for write, _ in pending])
        except Exception as exc:
            # Each writer retries its own batch (its batch id makes a retry harmless), so a failed pipeline
            # is reported to every one of them.
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), outcome in zip(pending, outcomes, strict=True):
            if future.done():
                continue  # its turn was cancelled while waiting
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
