-- Functions the scripts share; the loader puts this file (after the constants) in front of every script.
-- Each takes the keys it touches as arguments, so a script passes on the KEYS it was given.

-- Appends one event: the sequence number comes from the response hash, so writers never collide.
local function append(resp, stream, attempt, maxlen, etype, body)
  local seq = redis.call('HINCRBY', resp, 'seq', 1)
  local data = '{"sequence_number":' .. seq .. ',' .. string.sub(body, 2)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, seq .. '-1',
             'seq', seq, 'type', etype, 'attempt', attempt, 'data', data)
  return seq
end

-- The first turn of a conversation's queue that can still hand over, or nil for none. Heads that finished
-- without leaving the queue, or whose record is gone (deleted, expired), never will: they are dropped on the
-- way, so they can never lock the conversation. A head's record is named by the queue's member (see the
-- loader's docstring on keys named by members).
local function live_head(turns)
  while true do
    local head = redis.call('LINDEX', turns, 0)
    if not head then return nil end
    local st = redis.call('HGET', RESPONSE_PREFIX .. head, 'status')
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
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, max_wake - 1)
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

-- The number of an API key's turns in flight, once stale members are dropped: those whose response is
-- terminal, or has had no record for `grace_ms` (an accept writes the slot and the record together, but a
-- record can expire). Only a full set is repaired: a stale member costs nothing until it keeps a turn out,
-- and the common path stays O(1) however many turns are in flight.
local function live_turns(inflight, limit, now, grace_ms)
  local live = redis.call('ZCARD', inflight)
  if live < limit then return live end
  local members = redis.call('ZRANGE', inflight, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local status = redis.call('HGET', RESPONSE_PREFIX .. members[i], 'status')
    if (status and TERMINAL[status]) or (not status and tonumber(members[i + 1]) < now - grace_ms) then
      redis.call('ZREM', inflight, members[i])
      live = live - 1
    end
  end
  return live
end

-- Called as a turn commits: frees its API key's slot (`inflight` is that key's set; a turn of no key holds
-- none and leaves it alone) and adds its usage to its project's day. The caller passes the token counts of
-- its Response's usage ('' when it has none), so no script decodes a Response (it may be stored compressed).
local function settle_accounts(inflight, usage_key, has_slot, response_id, input_tokens, output_tokens)
  if has_slot then redis.call('ZREM', inflight, response_id) end
  local day = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
  redis.call('HINCRBY', usage_key, day .. ':turns', 1)
  if input_tokens ~= '' then
    redis.call('HINCRBY', usage_key, day .. ':input_tokens', tonumber(input_tokens) or 0)
    redis.call('HINCRBY', usage_key, day .. ':output_tokens', tonumber(output_tokens) or 0)
  end
end
