-- Claims up to `count` due webhook deliveries for a lease: they move that far into the future.
local due = KEYS[1]
local now, count, lease_ms = ARGV[1], ARGV[2], ARGV[3]

local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, count)
for _, id in ipairs(ids) do redis.call('ZADD', due, tonumber(now) + tonumber(lease_ms), id) end
return ids
