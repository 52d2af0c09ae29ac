-- Extends a job's lease while the claim is still the caller's. Returns 1 if still ours.
local marker, running = KEYS[1], KEYS[2]
local job_id, token, now, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

if redis.call('GET', marker) ~= token then return 0 end
redis.call('PEXPIRE', marker, lease_ms)
redis.call('ZADD', running, 'XX', now + lease_ms, job_id)
return 1
