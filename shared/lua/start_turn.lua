-- Moves a turn to in_progress as a new attempt, unless it finished, is gone, or must wait for its
-- conversation. Returns {status_before, attempt, cancel_flag, request json, waiting, announced, entries,
-- continues, waits}; a missing record is 'missing' and a finished one its status, neither started. One writer
-- per conversation: a turn starts only at the head of its conversation's queue, else the reply says it is
-- waiting (see live_head). An attempt that picks up a turn its previous attempt put back on the queue to wait
-- for the upstream (defer_turn.lua) `continues` it: counted in `waits`, so attempt - waits is the turn's tries.
local resp, stream, turns = KEYS[1], KEYS[2], KEYS[3]
local maxlen, ttl, in_progress_type, rid, conversation_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local want_entries = ARGV[6]  -- '1': a first run gets the stream's entries, to compact its stream as it commits

local st = redis.call('HMGET', resp, 'status', 'attempt', 'cancel', 'request', 'progress', 'conversation',
                     'deferred', 'waits')
local waits = tonumber(st[8]) or 0
if not st[1] then return {'missing', 0, '', '', 0, 0, {}, 0, 0} end
local status, cancel, request = st[1], st[3] or '', st[4] or ''
if TERMINAL[status] then return {status, tonumber(st[2]) or 0, cancel, '', 0, 0, {}, 0, waits} end
-- The caller names the conversation (its turns queue is KEYS[3]); a record without one (a turn on its own)
-- has '' in the field, and the caller passes ''.
if conversation_id ~= '' then
  local head = live_head(turns)
  if head and head ~= rid then return {status, tonumber(st[2]) or 0, cancel, request, 1, 0, {}, 0, waits} end
end
local attempt = redis.call('HINCRBY', resp, 'attempt', 1)
redis.call('HSET', resp, 'status', 'in_progress')
local continues = 0
if st[7] and tonumber(st[7]) == attempt - 1 then
  continues = 1
  waits = redis.call('HINCRBY', resp, 'waits', 1)
end
-- A first run publishes the in_progress event the API encoded at accept, saving the worker that write. A
-- re-run writes its own, carrying the output it continues from; a turn cancelled meanwhile writes none.
local announced = 0
if st[5] then
  if attempt == 1 and (cancel == '' or cancel == '0') then
    local feed = feed_of(resp)
    append(resp, stream, tostring(attempt), maxlen, in_progress_type, st[5], feed)
    expire_streams(stream, ttl, feed)
    announced = 1
  end
end
-- Of no use once the turn has started: its first event, and what an interrupt before pickup would store.
redis.call('HDEL', resp, 'progress', 'cancelled', 'cancelled_hook', 'deferred')
-- A first run's stream holds only what the accept and this start wrote: a few entries, sent back so that the
-- worker knows every entry of the stream without reading it (a re-run reads it anyway).
local entries = {}
if want_entries == '1' and attempt == 1 then entries = redis.call('XRANGE', stream, '-', '+') end
return {status, attempt, cancel, request, 0, announced, entries, continues, waits}
