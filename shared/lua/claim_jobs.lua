-- Claims up to `max_jobs` due jobs: each moves from the queue to the running set (score = lease expiry) in
-- the same step that sets arq's in-progress marker to the claim's token. Jobs whose lease lapsed (their
-- worker died) go back on the queue first; finding them reads only the expired end of the running set.
-- Returns {job_id, score, token, ...}. The markers are named by the members (see the loader's docstring).
local queue, running = KEYS[1], KEYS[2]
local now, max_jobs, lease_ms, marker_prefix, token_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local expired = redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  if redis.call('EXISTS', marker_prefix .. id) == 0 then
    redis.call('ZREM', running, id)
    redis.call('ZADD', queue, now, id)
  end
end
local due = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'WITHSCORES', 'LIMIT', 0, max_jobs)
local out = {}
for i = 1, #due, 2 do
  local id = due[i]
  local token = token_prefix .. id
  redis.call('ZREM', queue, id)
  redis.call('ZADD', running, tonumber(now) + tonumber(lease_ms), id)
  redis.call('SET', marker_prefix .. id, token, 'PX', lease_ms)
  table.insert(out, id)
  table.insert(out, due[i + 1])
  table.insert(out, token)
end
return out
