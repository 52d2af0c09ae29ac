"""An API key's concurrent-turn slots: one member per queued or running turn in the key's in-flight set.

The set is the key's, so on a cluster it is in the key's own slot, never in a turn's (a key's turns are in
every partition): a slot is taken in a step of its own just before the turn's accept, and given back if the
accept refuses the turn; the turn's commit gives it back right after (shared/turn_state.py). A member can
outlive its turn (a worker killed between the commit and the release, an API node killed between the take
and the accept, a turn stopped by another's `interrupt`): only a full set is repaired, by dropping members
whose response is terminal, or has had no record for UNSTORED_GRACE_MS; so the common path is one O(1)
script, and a stale member costs nothing until it would keep a turn out.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from shared import keys, response_record
from shared.lua import scripts
from shared.redis_conn import UNAVAILABLE

log = logging.getLogger(__name__)

# A slot whose response has no record is dropped only once it is older than this.
UNSTORED_GRACE_MS = 30_000


class KeySlots:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = scripts(redis).take_key_slot

    async def take(self, key_id: str, response_id: str, limit: int) -> bool:
        """Takes a slot for the turn; False when the key's turns in flight are at `limit`."""
        inflight = keys.api_key_inflight(key_id)
        for repaired in (False, True):
            if await self._take(keys=[inflight], args=[response_id, limit]):
                return True
            if repaired or not await self._repair(inflight):
                return False
        return False

    async def release(self, key_id: str, response_id: str) -> None:
        """Gives the slot back. Called once the turn is settled either way (refused, or committed), so a failure
        is logged, not raised: the member is dropped by the set's next repair."""
        try:
            await self.redis.zrem(keys.api_key_inflight(key_id), response_id)
        except UNAVAILABLE as exc:
            log.warning("API key %s: the slot of %s is left to the next repair (%s)", key_id, response_id, exc)

    async def _repair(self, inflight: str) -> bool:
        """Drops members whose turn is over; True if any was."""
        members = await self.redis.zrange(inflight, 0, -1, withscores=True)
        now_s, _ = await self.redis.time()
        stale_before = now_s * 1000 - UNSTORED_GRACE_MS
        statuses = await response_record.statuses(self.redis, [m.decode() for m, _ in members])
        dead = [
            member
            for (member, admitted), status in zip(members, statuses, strict=True)
            if (status is not None and status.terminal) or (status is None and admitted < stale_before)
        ]
        if dead:
            await self.redis.zrem(inflight, *dead)
        return bool(dead)
