-- Accepts a turn: every check and every write of the accept in one atomic step (see shared/turn_accept.py).
-- Returns {'accepted', turns stopped} or {refusal} (see Refusal); a refused turn leaves nothing written.
-- Under `interrupt` and `rollback` the turns ahead in the conversation are stopped in the same step (see
-- stop_turns_ahead), so of two accepts racing on one conversation each stops whatever is ahead of it.
-- Every key is in the turn's partition (one slot on a cluster); the API key's concurrent-turn slot is taken
-- before, in the key's own slot (shared/key_slots.py).
local resp, stream, active, queue, job_key, result_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local queue_wake, conv, turns, claim_key = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
-- The partition's webhook outbox and the project's usage there, for turns finished as cancelled here.
local outbox, usage = KEYS[11], KEYS[12]
local rid, now, project, conversation_id, lock_policy = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local conversation_ttl, announce, max_queue_depth = ARGV[6], ARGV[7] == '1', ARGV[8]
local claim_accepted, claim_ttl, response_ttl, maxlen, stream_ttl = ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local job, job_ttl_ms, max_wake, n_events = ARGV[14], ARGV[15], tonumber(ARGV[16]), tonumber(ARGV[17])
local FIRST_EVENT = 18  -- n_events (type, json) pairs, then the record's (field, value) pairs
local events_end = FIRST_EVENT - 1 + 2 * n_events

local in_conversation = conversation_id ~= ''
if in_conversation then
  local raw = redis.call('GET', conv)
  if not raw or (cjson.decode(raw)['project'] or DEFAULT_PROJECT) ~= project then
    return {'conversation_not_found'}
  end
end
if claim_accepted ~= '' then
  local claim = redis.call('GET', claim_key)
  -- Taken over after this request stalled: the request that holds it now creates the turn.
  if not claim or cjson.decode(claim)['id'] ~= rid then return {'claim_lost'} end
end
-- Run again after its answer was lost: redis-py sends a command again when its connection drops (and on a
-- cluster drops every node's connections when one node fails), and shared/lua's `call` runs an accept again
-- when its node went away. The response id is this request's own, so a record under it is this accept's,
-- already done. Judged before the checks that the turn itself would now fail (a full queue, a conversation it
-- holds), and not done again: the client gets its turn, once.
if redis.call('EXISTS', resp) == 1 then return {'accepted', 0} end
if redis.call('ZCARD', queue) >= tonumber(max_queue_depth) then return {'queue_full'} end
if in_conversation then
  -- Dead heads are dropped whatever the policy (see live_head); under `reject` a live one refuses the turn.
  local head = live_head(turns)
  if head and lock_policy == 'reject' then return {'conversation_locked'} end
end

local record = {}
for i = events_end + 1, #ARGV do record[#record + 1] = ARGV[i] end
redis.call('HSET', resp, unpack(record))
redis.call('EXPIRE', resp, response_ttl)
redis.call('ZADD', active, now, rid)
local stopped = 0
if in_conversation and (lock_policy == 'interrupt' or lock_policy == 'rollback') then
  stopped = stop_turns_ahead(turns, lock_policy == 'rollback', active, announce, outbox, usage, maxlen,
                             stream_ttl, response_ttl)
end
if in_conversation then
  redis.call('RPUSH', turns, rid)
  redis.call('EXPIRE', turns, conversation_ttl)
end
local feed = feed_of(resp)
for i = FIRST_EVENT, events_end, 2 do append(resp, stream, '0', maxlen, ARGV[i], ARGV[i + 1], feed) end
expire_streams(stream, stream_ttl, feed)
if claim_accepted ~= '' then redis.call('SET', claim_key, claim_accepted, 'EX', claim_ttl) end
enqueue(job_key, result_key, queue, queue_wake, job, job_ttl_ms, now, tagged(rid), max_wake)
return {'accepted', stopped}
