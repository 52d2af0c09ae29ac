-- Functions the scripts share; the loader puts this file (after the constants) in front of every script.
-- Each takes the keys it touches as arguments, so a script passes on the KEYS it was given.

-- A turn's id as its keys name it: behind its partition's hash tag on a cluster (see shared/keys.py), so a key
-- a script names from a member lands in the slot of the keys it was given.
local function tagged(id)
  if not HASH_TAGS then return id end
  local start = string.find(id, '_', 1, true) + 1
  return '{' .. string.sub(id, start, start + 3) .. '}' .. id
end

-- Appends one event to a conversation's live feed: entry id "<n>-1", n from the feed's own counter (kept
-- and expiring with the feed; cheaper than reading the feed's last entry). The data is the response's event
-- with its response id spliced in front, since deltas do not name it.
local function feed_append(feed, counter, rid, attempt, maxlen, etype, data)
  local n = redis.call('INCR', counter) - 1
  redis.call('XADD', feed, 'MAXLEN', '~', maxlen, n .. '-1', 'seq', n, 'type', etype, 'attempt', attempt,
             'response_id', rid, 'data', '{"response_id":"' .. rid .. '",' .. string.sub(data, 2))
end

-- The conversation feed a turn's record names (fields `feed`, `feed_seq`, `feed_ttl`: keys named by the record,
-- see the loader), or nil for a turn with none. Read once per script: every event the script writes goes there.
local function feed_of(resp)
  local f = redis.call('HMGET', resp, 'feed', 'feed_seq', 'feed_ttl')
  if not f[1] then return nil end
  local rid = string.sub(resp, #RESPONSE_PREFIX + 1)
  if HASH_TAGS then rid = string.sub(rid, string.find(rid, '}', 1, true) + 1) end
  return {key = f[1], counter = f[2], ttl = f[3], rid = rid}
end

-- A turn with a feed copies each event it writes there, in the same step, so the feed holds exactly what the
-- response's stream holds. `data` is the event as numbered in the response's stream.
local function to_feed(feed, attempt, maxlen, etype, data)
  if feed then feed_append(feed.key, feed.counter, feed.rid, attempt, maxlen, etype, data) end
end

-- The event JSON numbered `seq`, as a stream entry's data carries it.
local function numbered(seq, body)
  return '{"sequence_number":' .. seq .. ',' .. string.sub(body, 2)
end

-- Appends one event: the sequence number comes from the response hash, so writers never collide.
local function append(resp, stream, attempt, maxlen, etype, body, feed)
  local seq = redis.call('HINCRBY', resp, 'seq', 1)
  local data = numbered(seq, body)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, seq .. '-1',
             'seq', seq, 'type', etype, 'attempt', attempt, 'data', data)
  to_feed(feed, attempt, maxlen, etype, data)
  return seq
end

-- Renews a turn's stream (`ttl` after its last write) and, if it has one, its conversation's feed (its own TTL).
local function expire_streams(stream, ttl, feed)
  redis.call('EXPIRE', stream, ttl)
  if feed then
    -- The feed's own retention (records of before it had one: the stream's).
    local feed_ttl = feed.ttl or ttl
    redis.call('EXPIRE', feed.key, feed_ttl)
    redis.call('EXPIRE', feed.counter, feed_ttl)
  end
end

-- The first turn of a conversation's queue that can still hand over, or nil for none. Heads that finished
-- without leaving the queue, or whose record is gone (deleted, expired), never will: they are dropped on the
-- way, so they can never lock the conversation. A head's record is named by the queue's member (see the
-- loader's docstring on keys named by members).
local function live_head(turns)
  while true do
    local head = redis.call('LINDEX', turns, 0)
    if not head then return nil end
    local st = redis.call('HGET', RESPONSE_PREFIX .. tagged(head), 'status')
    if st and not TERMINAL[st] then return head end
    redis.call('LPOP', turns)
  end
end

-- Writes an arq job and its queue entry unless the job (or its result) already exists, as arq's enqueue_job
-- refuses then, and wakes one idle worker. Returns 1 when enqueued.
local function enqueue(job_key, result_key, queue, wake, job, ttl_ms, score, id, max_wake)
  if redis.call('EXISTS', job_key, result_key) > 0 then return 0 end
  redis.call('SET', job_key, job, 'PX', ttl_ms)
  redis.call('ZADD', queue, score, id)
  -- On a cluster the wake list is in another slot: the caller pushes the token (max_wake 0 here).
  if max_wake > 0 then
    redis.call('LPUSH', wake, '1')
    redis.call('LTRIM', wake, 0, max_wake - 1)
  end
  return 1
end

-- A job's lease alone, only while the token is still the claim's, so a worker whose lease lapsed cannot
-- release a newer claim of the same job; 1 if released.
local function release_lease(marker, running, job_id, token)
  if redis.call('GET', marker) ~= token then return 0 end
  redis.call('DEL', marker)
  redis.call('ZREM', running, job_id)
  return 1
end

-- What arq's finish_job does for a job that ran (its run counter and record go, so nothing runs it again;
-- no result is kept, nothing reads them), then the release of its lease. Keys as `JobClaim.keys()`. arq's
-- abort set is left alone: the workers run with arq's aborts off, so nothing ever writes it (and it is one
-- fixed key for every job, which no script working within one job's keys may touch).
local function finish_job(marker, running, retry, job, job_id, token)
  redis.call('DEL', retry, job)
  return release_lease(marker, running, job_id, token)
end

-- Redis' own clock in ms, so nodes with skewed clocks agree.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Called as a turn commits: adds its usage to its project's day (`usage_key`: the project's hash of the
-- turn's partition). The caller passes the token counts of its Response's usage ('' when it has none), so no
-- script decodes a Response (it may be stored compressed). The turn's API key slot is freed by the caller:
-- the key's set is in a slot of its own (shared/key_slots.py).
local function settle_usage(usage_key, input_tokens, output_tokens)
  local day = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
  redis.call('HINCRBY', usage_key, day .. ':turns', 1)
  if input_tokens ~= '' then
    redis.call('HINCRBY', usage_key, day .. ':input_tokens', tonumber(input_tokens) or 0)
    redis.call('HINCRBY', usage_key, day .. ':output_tokens', tonumber(output_tokens) or 0)
  end
end

-- Finishes a queued turn as cancelled, in the script that decided it (an interrupting accept): the Response
-- and webhook entry its own accept rendered for this (fields `cancelled`, `cancelled_hook`), the terminal
-- event, its usage (`usage`: the conversation's project's), the active index, and its place in the
-- conversation's queue. Its API key's slot is left to that key's next full admission, which drops finished
-- turns (shared/key_slots.py): the key is the stopped turn's, not one this script was given. Like a cancel before
-- pickup it adds nothing to the conversation; its job, when a worker claims it, finds it finished.
local function cancel_queued(resp, rid, turns, active, announce, outbox, usage, maxlen, stream_ttl, response_ttl)
  local f = redis.call('HMGET', resp, 'cancelled', 'cancelled_hook')
  redis.call('HSET', resp, 'status', 'cancelled', 'response', f[1])
  settle_usage(usage, '', '')  -- cancelled before pickup: no tokens
  local stream = EVENTS_PREFIX .. tagged(rid)
  local terminal = '{"type":"' .. CANCELLED_EVENT .. '","response":' .. f[1] .. '}'
  local feed = feed_of(resp)
  append(resp, stream, '0', maxlen, CANCELLED_EVENT, terminal, feed)
  expire_streams(stream, stream_ttl, feed)
  redis.call('HDEL', resp, 'progress', 'cancelled', 'cancelled_hook')
  redis.call('EXPIRE', resp, response_ttl)
  redis.call('ZREM', active, rid)
  if announce then redis.call('LPUSH', outbox, f[2]) end
  redis.call('DEL', TURN_WAKE_PREFIX .. tagged(rid))
  redis.call('LREM', turns, 0, rid)
end

-- Stops every unfinished turn of a conversation's queue for a turn accepted with `interrupt` or `rollback`:
-- a queued one is finished as cancelled here and now; a running one is marked cancel-requested and its
-- worker told, and it commits what it produced, then hands the conversation on (the queue keeps it ahead of
-- the new turn until then). Under `rollback` each is also marked `rollback`, which its commit honours by
-- adding nothing to the conversation. Returns how many turns were stopped.
local function stop_turns_ahead(turns, rollback, active, announce, outbox, usage, maxlen, stream_ttl, response_ttl)
  local stopped = 0
  for _, rid in ipairs(redis.call('LRANGE', turns, 0, -1)) do
    local resp = RESPONSE_PREFIX .. tagged(rid)
    local f = redis.call('HMGET', resp, 'status', 'cancelled')
    if f[1] and not TERMINAL[f[1]] then
      stopped = stopped + 1
      if rollback then redis.call('HSET', resp, 'rollback', '1') end
      if f[1] == 'queued' and f[2] then
        cancel_queued(resp, rid, turns, active, announce, outbox, usage, maxlen, stream_ttl, response_ttl)
      else
        -- Running (or queued by an API node that rendered no cancelled Response): its worker ends it.
        redis.call('HSET', resp, 'cancel', '1')
        redis.call('PUBLISH', CANCEL_CHANNEL, rid)
      end
    end
  end
  return stopped
end
