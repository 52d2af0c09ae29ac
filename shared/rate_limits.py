"""Per-key limits, kept in Redis by atomic scripts so any number of API replicas enforce one budget.

- Requests per minute: a sliding-window log (a ZSET of the key's requests in the last 60 s, on Redis' own
  clock, so API nodes with skewed clocks still agree). Exact: at most `rpm` requests in any 60 s.
- Concurrent turns: a ZSET of the key's queued and running response ids. A turn joins it when the API
  accepts it and leaves it in the same script that commits its terminal state (the commit script
  calls `settle_accounts`, shared/lua/lib.lua). Unlike a counter, a set can be repaired: admission drops
  members whose response is terminal or gone, so a lost release can never leak a slot for good.
- Token usage per project and day, counted once, at commit, from the upstream's usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.lua import scripts
from shared.redis_conn import text

WINDOW_MS = 60_000


@dataclass(frozen=True)
class RequestBudget:
    """The key's requests-per-minute budget after this request, as OpenAI's x-ratelimit-* headers carry it."""

    limit: int
    remaining: int
    reset_ms: int  # until the window holds none of the key's requests: the whole budget is back
    retry_after_ms: int  # 0 when allowed; else until the oldest request leaves the window


@dataclass(frozen=True)
class Authorized:
    key_id: str
    project: str
    max_concurrent: int
    allowed: bool
    budget: RequestBudget


class Limiter:
    """Authorizes requests with the authorize script (shared/lua/authorize_key.lua)."""

    # Digests remembered per process: a key's id never changes for its secret, and a revoked key's record
    # is gone, so a remembered id can only ever authorize what the script still finds.
    _MAX_REMEMBERED = 10_000

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._authorize = scripts(redis).authorize_key
        self._key_ids: dict[str, str] = {}

    async def authorize(self, digest: str) -> Authorized | None:
        """The key with this secret digest, its request counted; None if no such key (or revoked)."""
        key_id = self._key_ids.get(digest)
        reply = await self._counted(digest, key_id) if key_id is not None else None
        if reply is None:
            # Not remembered, or re-pointed since: look the digest up, then count against that key.
            self._key_ids.pop(digest, None)
            found = await self.redis.hget(keys.API_KEY_DIGESTS, digest)
            if found is None:
                return None
            key_id = text(found)
            reply = await self._counted(digest, key_id)
            if reply is None:
                return None
            if len(self._key_ids) >= self._MAX_REMEMBERED:
                self._key_ids.clear()
            self._key_ids[digest] = key_id
        _, key_id, project, limit, max_concurrent, remaining, reset_ms, retry_ms = reply
        return Authorized(
            key_id=text(key_id),
            project=text(project),
            max_concurrent=int(max_concurrent),
            allowed=int(reply[0]) == 2,
            budget=RequestBudget(int(limit), int(remaining), int(reset_ms), int(retry_ms)),
        )

    async def _counted(self, digest: str, key_id: str) -> list[Any] | None:
        """The script's reply for this key, or None when the digest does not (or no longer) name it."""
        reply = await self._authorize(
            keys=[keys.api_key(key_id), keys.api_key_rpm(key_id)],
            args=[digest, key_id, WINDOW_MS],
        )
        return None if int(reply[0]) == 0 else list(reply)
