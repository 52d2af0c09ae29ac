-- Looks up an API key by its secret's digest and counts the request in its sliding-window log.
-- Returns {0} for an unknown or revoked key, else
-- {1 over the limit | 2 allowed, key id, project, rpm, max_concurrent, remaining, reset ms, retry-after ms}.
local record, log = KEYS[1], KEYS[2]  -- one key's, in one slot
local digest, key_id, window = ARGV[1], ARGV[2], tonumber(ARGV[3])

-- The caller names the key it expects this digest to have (record and log keys are that key's); a digest
-- revoked or re-pointed since then is answered as unknown.
-- A revoked key's record is gone; a record whose digest is another's was never this secret's.
local f = redis.call('HMGET', record, 'project', 'rpm', 'max_concurrent', 'digest')
if not f[1] or f[4] ~= digest then return {0} end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
local limit = tonumber(f[2])
local used = redis.call('ZCARD', log)
if used >= limit then
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  local newest = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  return {1, key_id, f[1], limit, f[3], 0, tonumber(newest[2]) + window - now, tonumber(oldest[2]) + window - now}
end
-- The running request count doubles as a unique log member: two requests in one millisecond stay two.
local n = redis.call('HINCRBY', record, 'requests', 1)
redis.call('HSET', record, 'last_used', math.floor(now / 1000))
redis.call('ZADD', log, now, n)
redis.call('PEXPIRE', log, window)
return {2, key_id, f[1], limit, f[3], limit - used - 1, window, 0}
