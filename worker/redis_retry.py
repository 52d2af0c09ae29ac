"""Riding out Redis: every Redis call a worker makes is retried through an outage instead of failing.

A worker is long-lived and its turns are durable in Redis, so a dropped connection, a restart or a failover
is something to wait out, not an error: a turn must never become `failed` (or lose its arq job) because
Redis blinked. Retries back off exponentially with full jitter, so a fleet does not reconnect in lock-step,
up to a cap (TURNSTREAM_REDIS_RETRY_MAX_S). One warning is logged per outage per process, not per call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ReadOnlyError

from shared import metrics
from shared.redis_conn import UNAVAILABLE

log = logging.getLogger(__name__)

T = TypeVar("T")

# UNAVAILABLE's ConnectionError covers BusyLoadingError (a restarted Redis still loading its AOF); ReadOnlyError
# is a replica answering during a Sentinel failover. OSError is what a socket torn down mid-read can raise.
TRANSIENT: tuple[type[BaseException], ...] = (*UNAVAILABLE, ReadOnlyError, OSError)

_BASE_S = 0.05


class Outage:
    """This process's view of Redis health: logs once when calls start failing and once when they recover."""

    def __init__(self, max_backoff_s: float) -> None:
        self.max_backoff_s = max_backoff_s
        self.since: float | None = None
        self.errors = 0

    def failed(self, exc: BaseException, what: str) -> None:
        self.errors += 1
        metrics.REDIS_ERRORS.inc()
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "cannot reach Redis (%s: %s) during %s; retrying; check TURNSTREAM_REDIS_URL if it lasts",
                type(exc).__name__, exc, what,
            )

    def recovered(self) -> None:
        if self.since is not None:
            metrics.REDIS_RECONNECTS.inc()
            log.warning("redis reachable again after %.1fs", time.monotonic() - self.since)
            self.since = None

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff_s, _BASE_S * 2**attempt))

    async def call(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Runs `op` until it succeeds; only transient Redis errors are retried, anything else is raised."""
        attempt = 0
        while True:
            try:
                result = await op()
            except TRANSIENT as exc:
                self.failed(exc, what)
                await asyncio.sleep(self.delay(attempt))
                attempt += 1
                continue
            self.recovered()
            return result
