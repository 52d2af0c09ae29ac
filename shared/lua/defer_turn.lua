-- Marks a running turn as going back on the queue to wait for its upstream, so that the start of its next
-- attempt knows that attempt continues after a wait (not a re-run after a worker died). Only the attempt that
-- owns the turn may: a stale attempt, a finished turn or a deleted record is left alone. Returns 1 if marked.
local resp = KEYS[1]
local attempt = ARGV[1]

local st = redis.call('HMGET', resp, 'status', 'attempt')
if st[1] ~= 'in_progress' or st[2] ~= attempt then return 0 end
redis.call('HSET', resp, 'deferred', attempt)
return 1
