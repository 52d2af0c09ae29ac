"""Whether a worker of this API's queue is alive, asked before accepting a turn whose client waits for it.

With no worker, a plain create would wait TURNSTREAM_SYNC_WAIT_TIMEOUT_S and a streamed one would show
nothing at all: both are refused at once instead (503 `no_live_workers`, before anything is stored), as are
WebSocket creates, AG-UI runs and compactions. A background create is accepted all the same: it is durable,
its client comes back for it, and it runs when a worker comes.

The answer is read from the workers' heartbeats (shared/fleet.py). A look that found a worker is trusted
for TURNSTREAM_LIVE_WORKER_CACHE_S, so in steady state a create costs no round trip and each API process
reads at most once per interval, however many creates arrive; creates arriving during a read share it.
A look that found none is never reused: the next create looks again, so a worker that has just started
is served at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from redis.asyncio import Redis

from shared import fleet


class LiveWorkers:
    def __init__(
        self, redis: Redis, queue: str, cache_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._redis = redis
        self._queue = queue
        self._cache_s = cache_s
        self._clock = clock
        self._trusted_until = -math.inf
        self._reading: asyncio.Task[bool] | None = None

    async def any_alive(self) -> bool:
        if self._clock() < self._trusted_until:
            return True
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read())
        # Shielded: a caller that goes away does not cancel the read the others are waiting for.
        return await asyncio.shield(self._reading)

    async def _read(self) -> bool:
        alive = bool(await fleet.live_workers(self._redis, self._queue))
        self._trusted_until = self._clock() + self._cache_s if alive else -math.inf
        return alive
