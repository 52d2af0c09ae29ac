-- Appends a batch of a turn's events, checking the attempt that writes them still owns the turn.
-- Returns {last_seq, cancel_flag}, or {-1} missing, {-2} stale attempt, {-3} already terminal.
-- A writer that lost the reply to a batch cannot know whether it was written; retrying it with the same
-- batch id is then a no-op instead of a second copy of every event (the last id is all that is needed:
-- one writer owns an attempt and writes its batches one at a time).
local resp, stream = KEYS[1], KEYS[2]
local attempt, maxlen, ttl, batch_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local FIRST_EVENT = 5  -- then (type, json) pairs to the end

local st = redis.call('HMGET', resp, 'status', 'attempt', 'cancel', 'batch')
if not st[1] then return {-1} end
if st[2] ~= attempt then return {-2} end
if TERMINAL[st[1]] then return {-3} end
if batch_id ~= '' and st[4] == batch_id then
  return {tonumber(redis.call('HGET', resp, 'seq')), st[3] or ''}
end
local seq = -1
local feed = feed_of(resp)
for i = FIRST_EVENT, #ARGV, 2 do
  seq = append(resp, stream, attempt, maxlen, ARGV[i], ARGV[i + 1], feed)
end
if batch_id ~= '' then redis.call('HSET', resp, 'batch', batch_id) end
expire_streams(stream, ttl, feed)
return {seq, st[3] or ''}
