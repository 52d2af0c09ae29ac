-- Takes one of an API key's concurrent-turn slots for a turn about to be accepted: 1 if taken, 0 if the key's
-- turns in flight are at its limit (the caller may repair the set and try once more: shared/key_slots.py).
local inflight = KEYS[1]
local rid, limit = ARGV[1], tonumber(ARGV[2])

if redis.call('ZCARD', inflight) >= limit then return 0 end
redis.call('ZADD', inflight, now_ms(), rid)
return 1
