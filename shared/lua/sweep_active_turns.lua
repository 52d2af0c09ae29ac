-- One page of the active-turns index: drops entries of finished or vanished turns, and names the turns that
-- are stranded (older than the grace, with no live lease and no job waiting). Returns {scanned, removed,
-- stranded ids...}. Each turn's record, job and marker are named by the index's members (see the loader).
local active, queue = KEYS[1], KEYS[2]
local job_prefix, marker_prefix, now, grace_ms, start, count = ARGV[1], ARGV[2], tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local ids = redis.call('ZRANGE', active, start, start + count - 1, 'WITHSCORES')
local out = {#ids / 2, 0}
for i = 1, #ids, 2 do
  local id, accepted = ids[i], tonumber(ids[i + 1])
  local job = tagged(id)  -- the turn's job id (shared/keys.py)
  local st = redis.call('HGET', RESPONSE_PREFIX .. job, 'status')
  if not st or TERMINAL[st] then
    redis.call('ZREM', active, id)
    out[2] = out[2] + 1
  elseif accepted < now - grace_ms
      and redis.call('EXISTS', marker_prefix .. job) == 0
      and not (redis.call('EXISTS', job_prefix .. job) == 1 and redis.call('ZSCORE', queue, job)) then
    table.insert(out, id)
  end
end
return out
