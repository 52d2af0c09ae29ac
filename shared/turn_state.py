"""A turn's state machine in Redis, as atomic Lua scripts the API and the worker share.

(accept) ──► queued ──start──► in_progress ──finish──► completed | failed | cancelled | incomplete
                 └──────────────finish (cancel before pickup)──────┘

The accept, which writes a turn's record as queued, is the API's script (shared/turn_accept.py).

Every transition and every event write checks the state it expects, so a re-run, a zombie worker of an
older attempt, or a cancel racing a pickup can never write twice or out of turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from shared import events, keys, metrics, webhooks
from shared.models import DEFAULT_PROJECT, TERMINAL_STATUSES_LUA, Status
from shared.queue import FINISH_JOB_FN, JobClaim
from shared.rate_limits import SETTLE_ACCOUNTS_FN
from shared.settings import Settings

# Appends one event: the sequence number comes from the response hash, so writers never collide.
APPEND_FN = """
local function append(resp, stream, attempt, maxlen, etype, body)
  local seq = redis.call('HINCRBY', resp, 'seq', 1)
  local data = '{"sequence_number":' .. seq .. ',' .. string.sub(body, 2)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, seq .. '-1',
             'seq', seq, 'type', etype, 'attempt', attempt, 'data', data)
  return seq
end
"""

# KEYS: response hash, events stream. ARGV: attempt, maxlen, ttl, batch id ('' = none), then (type, json) pairs.
# Returns {last_seq, cancel_flag} or {-1} missing, {-2} stale attempt, {-3} already terminal.
# A writer that lost the reply to a batch cannot know whether it was written; retrying it with the same
# batch id is then a no-op instead of a second copy of every event (the last id is all that is needed:
# one writer owns an attempt and writes its batches one at a time).
APPEND_EVENTS = APPEND_FN + f"""
local TERMINAL = {TERMINAL_STATUSES_LUA}
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'cancel', 'batch')
if not st[1] then return {{-1}} end
if st[2] ~= ARGV[1] then return {{-2}} end
if TERMINAL[st[1]] then return {{-3}} end
if ARGV[4] ~= '' and st[4] == ARGV[4] then
  return {{tonumber(redis.call('HGET', KEYS[1], 'seq')), st[3] or ''}}
end
local seq = -1
for i = 5, #ARGV, 2 do
  seq = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[i], ARGV[i + 1])
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'batch', ARGV[4]) end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {{seq, st[3] or ''}}
"""

# The first turn of a conversation's queue that can still hand over, or nil for none. Heads that finished
# without leaving the queue, or whose record is gone (deleted, expired), never will: they are dropped on the
# way, so they can never lock the conversation.
LIVE_HEAD_FN = f"""
local function live_head(turns)
  local TERMINAL = {TERMINAL_STATUSES_LUA}
  while true do
    local head = redis.call('LINDEX', turns, 0)
    if not head then return nil end
    local st = redis.call('HGET', '{keys.RESPONSE_PREFIX}' .. head, 'status')
    if st and not TERMINAL[st] then return head end
    redis.call('LPOP', turns)
  end
end
"""

# KEYS: response hash, events stream. ARGV: maxlen, stream ttl, in_progress event type, response id,
#       conversation key prefix, turns key suffix.
# Returns {status_before, attempt, cancel_flag, request json, waiting, announced}; a missing record is
# 'missing' and a finished one its status, neither started. One writer per conversation: a turn starts only
# at the head of its conversation's queue, else the reply says it is waiting (see live_head). The conversation id is
# a field of the record; an older record's is read from its request, which is never written back (cjson
# would turn [] into {}).
START_TURN = APPEND_FN + LIVE_HEAD_FN + f"""
local TERMINAL = {TERMINAL_STATUSES_LUA}
local resp = KEYS[1]
local st = redis.call('HMGET', resp, 'status', 'attempt', 'cancel', 'request', 'progress', 'conversation')
if not st[1] then return {{'missing', 0, '', '', 0, 0}} end
local status, cancel, request = st[1], st[3] or '', st[4] or ''
if TERMINAL[status] then return {{status, tonumber(st[2]) or 0, cancel, '', 0, 0}} end
if request ~= '' then
  -- The accept stores the conversation id as a field ('' for none); a record from an older API node has only
  -- its request to read it from.
  local cid = st[6]
  if not cid then cid = cjson.decode(request)['conversation_id'] end
  if type(cid) == 'string' and cid ~= '' then
    local head = live_head(ARGV[5] .. cid .. ARGV[6])
    if head and head ~= ARGV[4] then return {{status, tonumber(st[2]) or 0, cancel, request, 1, 0}} end
  end
end
local attempt = redis.call('HINCRBY', resp, 'attempt', 1)
redis.call('HSET', resp, 'status', 'in_progress')
-- A first run publishes the in_progress event the API encoded at accept, saving the worker that write. A
-- re-run writes its own, carrying the output it continues from; a turn cancelled meanwhile writes none.
local announced = 0
if st[5] then
  if attempt == 1 and (cancel == '' or cancel == '0') then
    append(resp, KEYS[2], tostring(attempt), ARGV[1], ARGV[3], st[5])
    redis.call('EXPIRE', KEYS[2], ARGV[2])
    announced = 1
  end
  redis.call('HDEL', resp, 'progress')  -- of no use once the turn has started
end
return {{status, attempt, cancel, request, 0, announced}}
"""

# KEYS: response hash, events stream, conversation items, conversation turns, conversation record, active turns,
#       the project's webhook endpoints, webhook outbox, then the keys of the job the turn ran under
#       (JobClaim.keys(); unused without a job).
# ARGV: expected status, attempt ('' = any), maxlen, stream ttl, response ttl, conversation ttl,
#       final status, response json, terminal type, terminal json, response id, wake key prefix,
#       webhook outbox entry, job id ('' = none), claim token, number of pending events n, then n
#       (type, json) pairs, then the conversation items to append.
# Returns 1 when committed, 0 when the turn was not in the expected state (already committed): then nothing
# is written and the job is left as it was.
FINISH_TURN = APPEND_FN + SETTLE_ACCOUNTS_FN + FINISH_JOB_FN + """
local resp, stream, items, turns, conv, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local st = redis.call('HMGET', resp, 'status', 'attempt')
if st[1] ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and st[2] ~= ARGV[2] then return 0 end
local attempt, pending_end = st[2] or '0', 16 + 2 * tonumber(ARGV[16])
-- A conversation deleted mid-turn gains nothing (and is not resurrected).
if redis.call('EXISTS', conv) == 1 then
  for i = pending_end + 1, #ARGV do redis.call('RPUSH', items, ARGV[i]) end
  redis.call('EXPIRE', items, ARGV[6])
  redis.call('EXPIRE', conv, ARGV[6])
end
redis.call('HSET', resp, 'status', ARGV[7], 'response', ARGV[8])
settle_accounts(resp, ARGV[11], ARGV[8])
-- What the turn's emitter had not written yet goes out here, in order, before the terminal event.
for i = 17, pending_end, 2 do append(resp, stream, attempt, ARGV[3], ARGV[i], ARGV[i + 1]) end
append(resp, stream, attempt, ARGV[3], ARGV[9], ARGV[10])
redis.call('EXPIRE', resp, ARGV[5])
redis.call('EXPIRE', stream, ARGV[4])
redis.call('ZREM', active, ARGV[11])
-- Written with the commit, so a turn that committed is announced even if its worker dies right after.
if redis.call('EXISTS', KEYS[7]) == 1 then redis.call('LPUSH', KEYS[8], ARGV[13]) end
-- A turn that never had to wait leaves its wake token unread; it is of no use once the turn is over.
redis.call('DEL', ARGV[12] .. ARGV[11])
if redis.call('LREM', turns, 0, ARGV[11]) > 0 then
  local nxt = redis.call('LINDEX', turns, 0)
  if nxt then
    redis.call('LPUSH', ARGV[12] .. nxt, '1')
    redis.call('EXPIRE', ARGV[12] .. nxt, ARGV[6])
  end
end
-- The turn's job is over with its commit: finished here, its worker has no bookkeeping left to send.
if ARGV[14] ~= '' then finish_job(KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], ARGV[14], ARGV[15]) end
return 1
"""

# Keys for a commit that finishes no job: the script never touches them.
_NO_JOB = JobClaim(queue_name="", job_id="", token="")


class StaleTurn(Exception):
    """Raised when a write is refused because the turn is gone, finished, or owned by a newer attempt."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__({-1: "response deleted", -2: "newer attempt owns the turn", -3: "turn finished"}[code])


@dataclass(frozen=True)
class Started:
    status_before: str  # 'missing' when there is no record
    attempt: int
    cancel_requested: bool
    request: str | None = None  # the stored TurnRequest JSON; None for a missing or finished turn
    waiting: bool = False  # another unfinished turn heads its conversation: nothing was started
    announced: bool = False  # its response.in_progress event was written with the start


@dataclass(frozen=True)
class Retention:
    stream_ttl_s: int
    response_ttl_s: int
    conversation_ttl_s: int
    stream_maxlen: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            stream_ttl_s=settings.stream_ttl_s,
            response_ttl_s=settings.response_ttl_s,
            conversation_ttl_s=settings.conversation_ttl_s,
            stream_maxlen=settings.stream_maxlen,
        )


class TurnState:
    """The scripts, registered once per Redis client."""

    def __init__(self, redis: Redis, retention: Retention) -> None:
        self.redis = redis
        self.retention = retention
        self._append = redis.register_script(APPEND_EVENTS)
        self._start = redis.register_script(START_TURN)
        self._finish = redis.register_script(FINISH_TURN)

    async def append(self, response_id: str, attempt: int, batch: list[events.Event], batch_id: str = "") -> bool:
        """Writes events in one round trip; returns whether cancel was requested meanwhile.

        With a `batch_id`, writing the same batch again (a retry after a lost reply) changes nothing.
        """
        if not batch:
            return False
        argv = self._append_args(attempt, batch, batch_id)
        result = await self._append(keys=[keys.response(response_id), keys.events(response_id)], args=argv)
        return _appended(result)

    async def append_many(self, writes: list[tuple[str, int, list[events.Event], str]]) -> list[bool | Exception]:
        """Several `append`s (response id, attempt, batch, batch id) in one pipelined round trip.

        Each entry gets its own outcome, in order: the cancel flag, or the exception its append raised
        (StaleTurn for a refused write). A connection error fails the whole call.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            for response_id, attempt, batch, batch_id in writes:
                pipe.evalsha(
                    self._append.sha, 2, keys.response(response_id), keys.events(response_id),
                    *self._append_args(attempt, batch, batch_id),
                )
            replies = await pipe.execute(raise_on_error=False)
        if any(isinstance(r, NoScriptError) for r in replies):
            # A restarted Redis forgets its scripts: load it once and write the entries that were refused.
            await self.redis.script_load(APPEND_EVENTS)
            retried = [w for w, r in zip(writes, replies, strict=True) if isinstance(r, NoScriptError)]
            again = iter(await self.append_many(retried))
            replies = [next(again) if isinstance(r, NoScriptError) else r for r in replies]
        outcomes: list[bool | Exception] = []
        for reply in replies:
            try:
                outcomes.append(reply if isinstance(reply, Exception | bool) else _appended(reply))
            except StaleTurn as stale:
                outcomes.append(stale)
        return outcomes

    def _append_args(self, attempt: int, batch: list[events.Event], batch_id: str) -> list[Any]:
        argv: list[Any] = [attempt, self.retention.stream_maxlen, self.retention.stream_ttl_s, batch_id]
        for event in batch:
            argv += [event["type"], events.encode(event)]
        return argv

    async def start(self, response_id: str) -> Started:
        """Moves the turn to in_progress as a new attempt, unless it finished, is gone, or must wait."""
        r = self.retention
        status, attempt, cancel, request, waiting, announced = await self._start(
            keys=[keys.response(response_id), keys.events(response_id)],
            args=[
                r.stream_maxlen,
                r.stream_ttl_s,
                events.IN_PROGRESS,
                response_id,
                keys.CONVERSATION_PREFIX,
                keys.TURNS_SUFFIX,
            ],
        )
        return Started(
            _text(status), int(attempt), _flag(cancel), _text(request) or None, bool(waiting), bool(announced)
        )

    async def finish(
        self,
        response_id: str,
        *,
        expect: Status,
        attempt: int | None,
        final: Status,
        response: dict[str, Any],
        conversation_id: str | None,
        items: list[dict[str, Any]],
        response_ttl_s: int | None = None,
        stream_ttl_s: int | None = None,
        project: str = DEFAULT_PROJECT,
        pending: Sequence[events.Event] = (),
        job: JobClaim | None = None,
    ) -> bool:
        """Commits the turn's end, once: True if committed, False if it was not in the expected state.

        `pending` events are written just before the terminal event; the `job` the turn ran under is
        finished with the commit (and left alone when the commit is refused).
        """
        terminal = events.lifecycle(events.TERMINAL_TYPE_FOR_STATUS[final.value], response)
        conv = conversation_id or ""
        r = self.retention
        pending_args: list[str] = []
        for event in pending:
            pending_args += [event["type"], events.encode(event)]
        committed = await self._finish(
            keys=[
                keys.response(response_id),
                keys.events(response_id),
                keys.conversation_items(conv),
                keys.conversation_turns(conv),
                keys.conversation(conv),
                keys.ACTIVE_TURNS,
                keys.webhook_endpoints(project),
                keys.WEBHOOK_OUTBOX,
                *(job or _NO_JOB).keys(),
            ],
            args=[
                expect.value,
                "" if attempt is None else attempt,
                r.stream_maxlen,
                stream_ttl_s or r.stream_ttl_s,
                response_ttl_s or r.response_ttl_s,
                r.conversation_ttl_s,
                final.value,
                events.encode(response),
                terminal["type"],
                events.encode(terminal),
                response_id,
                keys.TURN_WAKE_PREFIX,
                webhooks.outbox_entry(project, response_id, final.value, response),
                job.job_id if job else "",
                job.token if job else "",
                len(pending),
                *pending_args,
                *(events.encode(item) for item in items),
            ],
        )
        if committed:
            metrics.turn_finished(final.value, str(response.get("model", "")), project)
        return bool(committed)


def _appended(result: list[Any]) -> bool:
    """The APPEND_EVENTS reply as the cancel flag, or StaleTurn when the write was refused."""
    if int(result[0]) < 0:
        raise StaleTurn(int(result[0]))
    return _flag(result[1])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _flag(value: bytes | str | None) -> bool:
    return bool(value) and _text(value) not in ("", "0")  # type: ignore[arg-type]
