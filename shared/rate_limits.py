"""Per-key limits, kept in Redis by atomic scripts so any number of API replicas enforce one budget.

- Requests per minute: a sliding-window log (a ZSET of the key's requests in the last 60 s, on Redis' own
  clock, so API nodes with skewed clocks still agree). Exact: at most `rpm` requests in any 60 s.
- Concurrent turns: a ZSET of the key's queued and running response ids. A turn joins it when the API
  accepts it and leaves it in the same script that commits its terminal state (FINISH_TURN in
  shared/turn_state.py calls `settle_accounts`). Unlike a counter, a set can be repaired: admission drops
  members whose response is terminal or gone, so a lost release can never leak a slot for good.
- Token usage per project and day, counted once, at commit, from the upstream's usage.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys
from shared.models import TERMINAL_STATUSES_LUA, TurnRequest

WINDOW_MS = 60_000

# A slot whose response has no record is dropped only once it is older than this.
UNSTORED_GRACE_MS = 30_000


_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: the digest -> key id index. ARGV: secret digest, key record prefix, rpm log suffix, window ms.
# Returns {0} for an unknown or revoked key, else
# {1 over the limit | 2 allowed, key id, project, rpm, max_concurrent, remaining, reset ms, retry-after ms}.
AUTHORIZE = _NOW_MS + """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return {0} end
local record = ARGV[2] .. id
local f = redis.call('HMGET', record, 'project', 'rpm', 'max_concurrent')
if not f[1] then return {0} end
local now = now_ms()
local window = tonumber(ARGV[4])
local log = record .. ARGV[3]
redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
local limit = tonumber(f[2])
local used = redis.call('ZCARD', log)
if used >= limit then
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  local newest = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  return {1, id, f[1], limit, f[3], 0, tonumber(newest[2]) + window - now, tonumber(oldest[2]) + window - now}
end
-- The running request count doubles as a unique log member: two requests in one millisecond stay two.
local n = redis.call('HINCRBY', record, 'requests', 1)
redis.call('HSET', record, 'last_used', math.floor(now / 1000))
redis.call('ZADD', log, now, n)
redis.call('PEXPIRE', log, window)
return {2, id, f[1], limit, f[3], limit - used - 1, window, 0}
"""

# The number of the key's turns in flight, once stale members are dropped: those whose response is
# terminal, or has had no record for `grace_ms` (an accept writes the slot and the record together, but a
# record can expire). Only a full set is repaired: a stale member costs nothing until it keeps a turn out,
# and the common path stays O(1) however many turns are in flight. The accept script (shared/turn_accept.py)
# takes a slot when this is below the key's limit.
LIVE_TURNS_FN = f"""
local function live_turns(inflight, limit, now, grace_ms)
  local TERMINAL = {TERMINAL_STATUSES_LUA}
  local live = redis.call('ZCARD', inflight)
  if live < limit then return live end
  local members = redis.call('ZRANGE', inflight, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local status = redis.call('HGET', '{keys.RESPONSE_PREFIX}' .. members[i], 'status')
    if (status and TERMINAL[status]) or (not status and tonumber(members[i + 1]) < now - grace_ms) then
      redis.call('ZREM', inflight, members[i])
      live = live - 1
    end
  end
  return live
end
"""

# Called by FINISH_TURN as the turn commits: frees its slot and adds its usage to its project's day.
# The response hash names the keys (fields `inflight`, `usage`), so every path that ends a turn settles
# it without knowing about keys. The Response JSON is decoded once per turn, here.
SETTLE_ACCOUNTS_FN = """
local function settle_accounts(resp, response_id, response_json)
  local acct = redis.call('HMGET', resp, 'inflight', 'usage')
  if acct[1] then redis.call('ZREM', acct[1], response_id) end
  if not acct[2] then return end
  local day = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
  redis.call('HINCRBY', acct[2], day .. ':turns', 1)
  local usage = cjson.decode(response_json)['usage']
  if type(usage) == 'table' then
    redis.call('HINCRBY', acct[2], day .. ':input_tokens', tonumber(usage['input_tokens']) or 0)
    redis.call('HINCRBY', acct[2], day .. ':output_tokens', tonumber(usage['output_tokens']) or 0)
  end
end
"""


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
    """The scripts, registered once per Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._authorize = redis.register_script(AUTHORIZE)

    async def authorize(self, digest: str) -> Authorized | None:
        """The key with this secret digest, its request counted; None if no such key (or revoked)."""
        reply = await self._authorize(
            keys=[keys.API_KEY_DIGESTS], args=[digest, keys.API_KEY_PREFIX, keys.RPM_SUFFIX, WINDOW_MS]
        )
        if int(reply[0]) == 0:
            return None
        _, key_id, project, limit, max_concurrent, remaining, reset_ms, retry_ms = reply
        return Authorized(
            key_id=_text(key_id),
            project=_text(project),
            max_concurrent=int(max_concurrent),
            allowed=int(reply[0]) == 2,
            budget=RequestBudget(int(limit), int(remaining), int(reset_ms), int(retry_ms)),
        )


def turn_accounting(req: TurnRequest) -> dict[str, str]:
    """Fields of the response hash: whose turn it is, and what FINISH_TURN settles when it ends."""
    fields = {"project": req.project, "usage": keys.project_usage(req.project)}
    if req.key_id is not None:
        fields["inflight"] = keys.api_key_inflight(req.key_id)
    return fields


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
