"""The agent profiles the workers published (keys.AGENTS), cached per API process.

Every create names a model, and reading its card from Redis cost a round trip per turn. The cache serves a
card for up to `max_age_s`, so a worker that republishes a changed card is seen within that; a model the
cache does not know reloads it at once, so a newly published agent is served from its first request (a
passthrough deployment, where unknown models are normal, reloads on a miss only once the cache is stale).
Requests that find the cache stale together share one reload: a burst of creates after a quiet spell would
otherwise each read the hash (and each take a connection of its own to do it).
"""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from shared import keys
from shared.models import AgentCard


class AgentDirectory:
    def __init__(self, redis: Redis, *, passthrough: bool, max_age_s: float = 2.0) -> None:
        self.redis = redis
        self.passthrough = passthrough
        self.max_age_s = max_age_s
        self._cards: dict[str, AgentCard] = {}
        self._loaded_at = float("-inf")
        self._loading: asyncio.Task[None] | None = None

    async def cards(self) -> dict[str, AgentCard]:
        """Every published card by name, at most `max_age_s` old."""
        if self._stale():
            await self._load()
        return self._cards

    async def card(self, name: str) -> AgentCard | None:
        """The card of `name`, or None if no worker publishes it."""
        reloaded = self._stale()
        if reloaded:
            await self._load()
        card = self._cards.get(name)
        if card is None and not reloaded and not self.passthrough:
            await self._load()
            card = self._cards.get(name)
        return card

    def _stale(self) -> bool:
        return asyncio.get_running_loop().time() - self._loaded_at > self.max_age_s

    async def _load(self) -> None:
        loading = self._loading
        if loading is None or loading.done():
            loading = self._loading = asyncio.create_task(self._read())
        # Shielded: a caller that is cancelled (its client left) does not cancel the others' reload.
        await asyncio.shield(loading)

    async def _read(self) -> None:
        loaded_at = asyncio.get_running_loop().time()
        published = await self.redis.hgetall(keys.AGENTS)
        self._cards = {
            (name.decode() if isinstance(name, bytes) else name): AgentCard.model_validate(json.loads(raw))
            for name, raw in published.items()
        }
        self._loaded_at = loaded_at
