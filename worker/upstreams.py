"""The upstreams an agent's turns may call, in order, and the fleet-wide cooldown of one that keeps failing.

An agent runs on the worker's upstream (OPENAI_BASE_URL, OPENAI_API_KEY) with its own `model`, then on
the `fallbacks` its profile lists. Each upstream has a name (`model@host:port` unless the profile names it),
used as a metric label, in the turn's trace and Response metadata, and in the Redis keys of its health:
a count of its recent failures (each within a window of the last; a turn that gets an answer from it
after failing there clears it, much like LiteLLM's allowed fails per minute), and a cooldown (SET ... PX)
that every worker reads before it picks an upstream for a new turn, so one worker's bad minute spares the
others; it ends on its own.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from openai import AsyncOpenAI, DefaultAioHttpClient
from redis.asyncio import Redis

from shared import keys, metrics
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """A further OpenAI-compatible endpoint an agent may fall back to."""

    base_url: str
    model: str
    # The environment variable holding its API key; unset = the worker's own key (OPENAI_API_KEY).
    api_key_env: str | None = None
    name: str = ""  # defaults to model@host:port

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream base_url must be an http(s) URL, got {self.base_url!r}")
        if not self.model or not self.model.strip():
            raise ValueError(f"upstream at {self.base_url!r}: model must be non-empty")
        if not self.name:
            object.__setattr__(self, "name", upstream_name(self.base_url, self.model))


def upstream_name(base_url: str, model: str) -> str:
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{model}@{parts.hostname}{port}"


@dataclass(frozen=True)
class Route:
    """An upstream with the client that calls it."""

    upstream: Upstream
    client: AsyncOpenAI

    @property
    def name(self) -> str:
        return self.upstream.name

    @property
    def model(self) -> str:
        return self.upstream.model


def make_client(settings: Settings, base_url: str, api_key: str) -> AsyncOpenAI:
    """An openai SDK client with its own retries off: a turn's retries are turnstream's (worker/upstream_retry.py)."""
    return AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        timeout=settings.upstream_timeout_s,
        max_retries=0,
        http_client=DefaultAioHttpClient() if settings.upstream_http_client == "aiohttp" else None,
    )


class UpstreamPool:
    """This worker's clients, one per endpoint and key, and the fleet's upstream health in Redis."""

    def __init__(self, redis: Redis, settings: Settings, primary: AsyncOpenAI) -> None:
        self.redis = redis
        self.settings = settings
        self.primary = primary
        self._clients: dict[tuple[str, str | None], AsyncOpenAI] = {}

    def routes(self, model: str, fallbacks: tuple[Upstream, ...] = ()) -> list[Route]:
        """The agent's upstreams in the order its turns try them: the worker's own, then the fallbacks."""
        first = Route(Upstream(self.settings.upstream_base_url, model), self.primary)
        return [first, *(Route(u, self._client(u)) for u in fallbacks)]

    def _client(self, upstream: Upstream) -> AsyncOpenAI:
        key = (upstream.base_url, upstream.api_key_env)
        client = self._clients.get(key)
        if client is None:
            api_key = self.settings.openai_api_key.get_secret_value()
            if upstream.api_key_env:
                api_key = os.environ.get(upstream.api_key_env, "")
                if not api_key:
                    log.warning("upstream %s: %s is not set; calling it without a key", upstream.name,
                                upstream.api_key_env)
                    api_key = "not-set"
            client = self._clients[key] = make_client(self.settings, upstream.base_url, api_key)
        return client

    async def cooling(self, routes: list[Route]) -> list[bool]:
        """Which of the routes are in cooldown now (one round trip)."""
        values: list[Any] = await self.redis.mget([keys.upstream_cooldown(r.name) for r in routes])
        return [v is not None for v in values]

    async def failed(self, route: Route) -> bool:
        """Counts a failed call; True when it puts the upstream in cooldown for the fleet."""
        failures_key = keys.upstream_failures(route.name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(failures_key)
            pipe.pexpire(failures_key, int(self.settings.upstream_cooldown_window_s * 1000))
            count, _ = await pipe.execute()
        if int(count) < self.settings.upstream_cooldown_failures:
            return False
        cooldown_ms = int(self.settings.upstream_cooldown_s * 1000)
        started = await self.redis.set(keys.upstream_cooldown(route.name), "1", px=cooldown_ms, nx=True)
        if not started:
            return False  # another worker started it already
        await self.redis.delete(failures_key)
        metrics.UPSTREAM_COOLDOWNS.labels(route.name).inc()
        log.warning(
            "upstream %s failed %d times in a short while: cooling down for %gs", route.name, count,
            self.settings.upstream_cooldown_s,
        )
        return True

    async def recovered(self, route: Route) -> None:
        """A call that had failed answered: the count of recent failures starts again from zero."""
        await self.redis.delete(keys.upstream_failures(route.name))

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
