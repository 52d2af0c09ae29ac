-- Commits a turn's end, once: the final status and Response, its items to the conversation, the pending
-- events and the terminal event, its accounts, its webhook outbox entry, the wake of the conversation's next
-- turn, and the finish of the job it ran under. Returns 1 when committed, 0 when the turn was not in the
-- expected state (already committed): then nothing is written and the job is left as it was.
local resp, stream, items, turns, conv, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local outbox, own_wake, usage = KEYS[7], KEYS[8], KEYS[9]  -- the partition's outbox, the project's usage there
local marker, running, retry, job = KEYS[10], KEYS[11], KEYS[12], KEYS[13]  -- JobClaim.keys()
local scratch = KEYS[14]  -- where the compact entry is built (see below)
local expect, attempt_expected, maxlen, stream_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local response_ttl, conversation_ttl, final, response_json = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local terminal_type, terminal_json, rid, outbox_entry = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local job_id, token, announce = ARGV[13], ARGV[14], ARGV[15] == '1'  -- announce: the project has webhooks
local input_tokens, output_tokens = ARGV[16], ARGV[17]  -- the Response's usage ('' for none)
-- The whole stream, terminal event included, as one compressed entry (shared/stored_form.py), or ''; and the
-- sequence number of the last entry the committing attempt knows the stream to hold.
local compact, known_seq = ARGV[18], ARGV[19]
local n_pending = tonumber(ARGV[20])
local FIRST_PENDING = 21  -- n_pending (type, json) pairs, then the conversation items to append
local pending_end = FIRST_PENDING - 1 + 2 * n_pending

local st = redis.call('HMGET', resp, 'status', 'attempt')
if st[1] ~= expect then return 0 end
if attempt_expected ~= '' and st[2] ~= attempt_expected then return 0 end
local attempt = st[2] or '0'
local feed = feed_of(resp)
-- A conversation deleted mid-turn gains nothing (and is not resurrected); nor does a turn stopped by a
-- `rollback` accept, whenever that came.
if redis.call('EXISTS', conv) == 1 and not redis.call('HGET', resp, 'rollback') then
  for i = pending_end + 1, #ARGV do redis.call('RPUSH', items, ARGV[i]) end
  redis.call('EXPIRE', items, conversation_ttl)
  redis.call('EXPIRE', conv, conversation_ttl)
end
redis.call('HSET', resp, 'status', final, 'response', response_json)
settle_usage(usage, input_tokens, output_tokens)
-- The compact entry stands for the stream only if the stream holds every entry up to what the attempt knows
-- (none trimmed, none it did not write or read): same count, same last sequence number.
if compact ~= '' and redis.call('HGET', resp, 'seq') == known_seq
    and redis.call('XLEN', stream) == tonumber(known_seq) + 1 then
  local last = redis.call('HINCRBY', resp, 'seq', n_pending + 1)
  -- One script, so a reader sees either every plain entry or the compact one, whose id (the last event's)
  -- is past any position a reader of the plain entries can hold; a blocked XREAD is woken by the new key.
  -- Built in a scratch key and copied: a stream's first XADD reserves a 4 KB node, more than a short turn's
  -- whole entry, while a copy allocates what the node holds.
  redis.call('DEL', stream, scratch)
  redis.call('XADD', scratch, last .. '-1', 'seq', last, 'events', compact)
  -- COPY came with Redis 6.2: before it, the entry keeps the node its XADD made.
  if redis.pcall('COPY', scratch, stream) == 1 then redis.call('DEL', scratch) else redis.call('RENAME', scratch, stream) end
  -- The conversation's feed gets these events one by one, as the plain path below would have written them.
  local seq = last - n_pending
  for i = FIRST_PENDING, pending_end, 2 do
    to_feed(feed, attempt, maxlen, ARGV[i], numbered(seq, ARGV[i + 1]))
    seq = seq + 1
  end
  to_feed(feed, attempt, maxlen, terminal_type, numbered(last, terminal_json))
else
  -- What the turn's emitter had not written yet goes out here, in order, before the terminal event.
  for i = FIRST_PENDING, pending_end, 2 do append(resp, stream, attempt, maxlen, ARGV[i], ARGV[i + 1], feed) end
  append(resp, stream, attempt, maxlen, terminal_type, terminal_json, feed)
end
redis.call('EXPIRE', resp, response_ttl)
expire_streams(stream, stream_ttl, feed)
redis.call('HDEL', resp, 'progress', 'cancelled', 'cancelled_hook')
redis.call('ZREM', active, rid)
-- Written with the commit, so a turn that committed is announced even if its worker dies right after.
if announce then redis.call('LPUSH', outbox, outbox_entry) end
-- A turn that never had to wait leaves its wake token unread; it is of no use once the turn is over.
redis.call('DEL', own_wake)
if redis.call('LREM', turns, 0, rid) > 0 then
  local nxt = redis.call('LINDEX', turns, 0)
  if nxt then
    -- The next turn's wake list is named by the queue's member (see the loader on keys named by members).
    local wake = TURN_WAKE_PREFIX .. tagged(nxt)
    redis.call('LPUSH', wake, '1')
    redis.call('EXPIRE', wake, conversation_ttl)
  end
end
-- The turn's job is over with its commit: finished here, its worker has no bookkeeping left to send.
if job_id ~= '' then finish_job(marker, running, retry, job, job_id, token) end
return 1
