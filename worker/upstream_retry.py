"""The one retry loop between a turn and its model provider: which failures are retried, how long to wait,
which upstream to call next, and when the turn gives up.

Retried: 408, 409, 429 and 5xx answers, connections that fail or are cut mid-stream, and a first token that
does not come in time. Not retried: any other answer (400, 401, 403, 404, context length, content policy)
and a 429 that says the account is out of quota. Waits honour `retry-after-ms` / `retry-after`; without
them they grow exponentially (capped, with jitter). A turn has a budget of time from its first failure
(TURNSTREAM_UPSTREAM_RETRY_BUDGET_S, or its agent's own); a wait that would end past it ends the turn.

A wait longer than TURNSTREAM_UPSTREAM_RETRY_INLINE_MAX_S is not slept in the worker: the turn raises
`Backoff`, its job goes back on the queue due when the wait ends, and any worker continues it from its
stream, as it continues a dead worker's turn. The retry state (budget used, what was tried, which upstream)
lives in Redis meanwhile, so the wait survives the worker.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from dataclasses import dataclass, field

import openai
from redis.asyncio import Redis

from shared import keys, metrics
from shared.settings import Settings
from worker.chat_stream import StreamCut
from worker.upstream_diagnostics import describe_upstream_error, refused
from worker.upstreams import Route, UpstreamPool

log = logging.getLogger(__name__)

_NOT_RETRIED_CODES = frozenset(
    {"insufficient_quota", "context_length_exceeded", "content_filter", "content_policy_violation"}
)
_RETRY_AFTER_MAX_S = 3600.0  # a Retry-After past an hour is taken as an hour (the budget ends the turn anyway)
_STATE_MARGIN_S = 600  # the retry state outlives the budget by this much, for a turn that is slow to resume


@dataclass(frozen=True)
class Failure:
    """A failed upstream call that may succeed if tried again."""

    # A bounded label: the HTTP status, "connection", "connection_refused", "timeout", "first_token_timeout",
    # "cut" (the stream broke off) or "stream_error" (an error chunk mid-stream).
    reason: str
    detail: str  # what happened, for the log and the turn's error
    status: int | None = None
    retry_after_s: float | None = None


def classify(exc: BaseException, first_token_timeout_s: float) -> Failure | None:
    """The failure to retry, or None when trying again cannot help."""
    if isinstance(exc, TimeoutError):
        return Failure("first_token_timeout", f"no output within {first_token_timeout_s:g}s")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status not in (408, 409, 429) and status < 500:
            return None
        if _error_code(exc.body) in _NOT_RETRIED_CODES:
            return None
        return Failure(str(status), describe_upstream_error(exc), status, retry_after(exc.response.headers))
    if isinstance(exc, StreamCut):
        return Failure("cut", describe_upstream_error(exc))
    if isinstance(exc, openai.APIConnectionError) and refused(exc):
        return Failure("connection_refused", describe_upstream_error(exc))
    if isinstance(exc, openai.APITimeoutError):
        return Failure("timeout", describe_upstream_error(exc))
    if isinstance(exc, openai.APIConnectionError):
        return Failure("connection", describe_upstream_error(exc))
    if isinstance(exc, openai.APIError):  # an error chunk in the middle of a stream
        if _error_code(exc.body) in _NOT_RETRIED_CODES:
            return None
        return Failure("stream_error", describe_upstream_error(exc))
    return None


def _error_code(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return str(inner["code"])
    return None


def retry_after(headers: object) -> float | None:
    """Seconds the upstream asked to wait: `retry-after-ms` (OpenAI's), else `retry-after` (seconds or a date)."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    try:
        ms = get("retry-after-ms")
        if ms is not None:
            return min(max(0.0, float(ms) / 1000), _RETRY_AFTER_MAX_S)
        value = get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - time.time()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, seconds), _RETRY_AFTER_MAX_S)


def backoff_s(failures: int, settings: Settings, asked_s: float | None) -> float:
    """The wait before the next call: what the upstream asked (plus up to 10% jitter, so the fleet's turns
    do not all come back in the same millisecond), else capped exponential backoff with full jitter."""
    if asked_s is not None:
        return asked_s * (1 + random.uniform(0, 0.1))
    cap = min(settings.upstream_retry_max_s, settings.upstream_retry_base_s * 2 ** max(0, failures - 1))
    return random.uniform(cap / 2, cap)


class Backoff(Exception):
    """The turn waits `delay_s` back on the queue instead of in this worker."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"waiting {delay_s:.1f}s for the upstream")
        self.delay_s = delay_s


class Exhausted(Exception):
    """The turn's retry budget is spent (or its upstreams are): `code` and message are the turn's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _State:
    """What a turn's retries have done so far; kept in Redis across the waits it spends on the queue."""

    first_failure_ms: int = 0
    failures: int = 0  # on the current upstream, in this turn
    upstream: int = 0
    tried: dict[str, int] = field(default_factory=dict)  # "429 from NAME" -> times

    def summary(self) -> str:
        return ", ".join(f"{n}x {what}" for what, n in self.tried.items())


class TurnRetries:
    """One turn's retries across its upstreams; `route` is the upstream to call now."""

    def __init__(
        self, redis: Redis, pool: UpstreamPool, settings: Settings, routes: list[Route], response_id: str,
        *, budget_s: float | None = None,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.settings = settings
        self.routes = routes
        self.key = keys.upstream_retry(response_id)
        self.budget_s = budget_s or settings.upstream_retry_budget_s
        self.state = _State()
        self._failed_here: set[int] = set()  # routes that failed in this attempt (and are cleared on success)

    @property
    def route(self) -> Route:
        return self.routes[self.state.upstream]

    @property
    def retrying(self) -> bool:
        return self.state.first_failure_ms > 0

    async def start(self, *, resumed: bool) -> None:
        """Picks up a re-run's retry state, then skips upstreams in cooldown when there is another to call."""
        if resumed:
            raw = await self.redis.hgetall(self.key)
            if raw:
                self.state = _State(
                    first_failure_ms=int(raw.get(b"first_failure_ms", 0)),
                    failures=int(raw.get(b"failures", 0)),
                    upstream=min(int(raw.get(b"upstream", 0)), len(self.routes) - 1),
                    tried=json.loads(raw.get(b"tried", b"{}")),
                )
        if len(self.routes) > 1:
            cooling = await self.pool.cooling(self.routes)
            self._move_on(cooling, count=False)

    def _move_on(self, cooling: list[bool], *, count: bool) -> bool:
        """Moves to the first upstream from the current one that is not cooling down; True if it moved."""
        for index in range(self.state.upstream, len(self.routes)):
            if not cooling[index]:
                if index != self.state.upstream:
                    self.state.upstream, self.state.failures = index, 0
                    if count:
                        metrics.UPSTREAM_FALLBACKS.labels(self.route.name).inc()
                    return True
                return False
        return False

    async def failed(self, failure: Failure) -> float:
        """Records the failure; returns how long to wait before calling `route` (0: another upstream now).

        Raises Exhausted when the turn's budget cannot cover the wait.
        """
        now_ms = int(time.time() * 1000)
        route = self.route
        state = self.state
        if not state.first_failure_ms:
            state.first_failure_ms = now_ms
        state.failures += 1
        what = f"{failure.reason} from {route.name}"
        state.tried[what] = state.tried.get(what, 0) + 1
        self._failed_here.add(state.upstream)
        cooling_now = await self.pool.failed(route)
        delay = 0.0
        moved = False
        if state.upstream + 1 < len(self.routes) and (
            cooling_now or state.failures >= self.settings.upstream_attempts_before_fallback
        ):
            # Fall back: the next upstream not cooling down, else simply the next one.
            cooling = await self.pool.cooling(self.routes)
            cooling[state.upstream] = True
            moved = self._move_on(cooling, count=True)
            if not moved:
                state.upstream, state.failures = state.upstream + 1, 0
                metrics.UPSTREAM_FALLBACKS.labels(self.route.name).inc()
                moved = True
        if moved:
            log.warning("upstream %s failed (%s); moving on to %s", route.name, failure.detail, self.route.name)
        else:
            delay = backoff_s(state.failures, self.settings, failure.retry_after_s)
        spent_s = (now_ms - state.first_failure_ms) / 1000
        if spent_s + delay > self.budget_s:
            code = "rate_limit_exceeded" if failure.status == 429 else "server_error"
            raise Exhausted(
                code,
                f"{failure.detail} (upstream {route.name}; gave up after {spent_s:.1f}s of its "
                f"{self.budget_s:g}s retry budget; tried: {state.summary()})",
            )
        if not moved:
            metrics.UPSTREAM_RETRIES.labels(route.name, failure.reason).inc()
            log.warning("retrying in %.1f s after %s from %s: %s", delay, failure.reason, route.name, failure.detail)
        await self._save()
        return delay

    async def served(self) -> None:
        """The current upstream answered: clears its count of recent failures if it failed in this attempt."""
        for index in self._failed_here:
            if index == self.state.upstream:
                await self.pool.recovered(self.routes[index])
        self._failed_here.clear()
        self.state.failures = 0

    async def _save(self) -> None:
        state = self.state
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.key,
                mapping={
                    "first_failure_ms": state.first_failure_ms,
                    "failures": state.failures,
                    "upstream": state.upstream,
                    "tried": json.dumps(state.tried),
                },
            )
            pipe.expire(self.key, int(self.budget_s + _STATE_MARGIN_S))
            await pipe.execute()

