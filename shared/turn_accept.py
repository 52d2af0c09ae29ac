"""Accepting a turn: every check and every write of the accept in one atomic script, one round trip.

The checks, in the order a client sees their answers:
  the conversation exists and is the caller's (else 404) → an Idempotency-Key claim is still this
  request's (else 409) → the API key has a free concurrent-turn slot (else 429) → the queue has room
  (else 503) → the conversation has no turn in progress under `conversation_lock: reject` (else 409).
Then the writes: the key's slot, the record, the conversation's turn queue, the active index (the
sweeper's), `response.created` (and `response.queued` for background turns), the claim marked accepted,
arq's job and the wake token for an idle worker.

Nothing is written unless every check passes, so a refused turn leaves nothing to undo; and a turn the
script wrote is whole, so no failure afterwards can leave a record without its job, or a conversation
locked by a turn that never runs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from arq.connections import ArqRedis
from arq.utils import timestamp_ms

from shared import events, keys
from shared.models import DEFAULT_PROJECT
from shared.queue import ENQUEUE_FN, MAX_WAKE_TOKENS, job_bytes
from shared.rate_limits import LIVE_TURNS_FN, UNSTORED_GRACE_MS
from shared.turn_state import APPEND_FN, LIVE_HEAD_FN, Retention

# KEYS: 1 response, 2 events, 3 active turns, 4 queue, 5 arq job, 6 arq result, 7 queue wake,
#       8 conversation, 9 conversation turns, 10 key in-flight set, 11 idempotency claim.
# ARGV: 1 response id, 2 now ms, 3 project, 4 conversation id ('' = none), 5 lock policy,
#       6 conversation ttl, 7 max concurrent ('' = no slot to take), 8 unstored grace ms, 9 max queue depth,
#       10 the claim marked accepted ('' = no claim), 11 claim ttl, 12 response ttl, 13 stream maxlen,
#       14 stream ttl, 15 job, 16 job ttl ms, 17 max wake tokens, 18 n events, then n (type, json) pairs,
#       then the record's (field, value) pairs.
# Returns {'accepted'} or {refusal} (see Refusal).
_ACCEPT = (
    APPEND_FN
    + LIVE_HEAD_FN
    + ENQUEUE_FN
    + LIVE_TURNS_FN
    + f"""
local rid, now = ARGV[1], tonumber(ARGV[2])
local in_conversation = ARGV[4] ~= ''
if in_conversation then
  local raw = redis.call('GET', KEYS[8])
  if not raw or (cjson.decode(raw)['project'] or '{DEFAULT_PROJECT}') ~= ARGV[3] then
    return {{'conversation_not_found'}}
  end
end
if ARGV[10] ~= '' then
  local claim = redis.call('GET', KEYS[11])
  -- Taken over after this request stalled: the request that holds it now creates the turn.
  if not claim or cjson.decode(claim)['id'] ~= rid then return {{'claim_lost'}} end
end
if ARGV[7] ~= '' and live_turns(KEYS[10], tonumber(ARGV[7]), now, tonumber(ARGV[8])) >= tonumber(ARGV[7]) then
  return {{'concurrency'}}
end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[9]) then return {{'queue_full'}} end
if in_conversation then
  -- Dead heads are dropped whatever the policy (see live_head); under `reject` a live one refuses the turn.
  local head = live_head(KEYS[9])
  if head and ARGV[5] == 'reject' then return {{'conversation_locked'}} end
end

if ARGV[7] ~= '' then redis.call('ZADD', KEYS[10], now, rid) end
local n = tonumber(ARGV[18])
local record = {{}}
for i = 19 + 2 * n, #ARGV do record[#record + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(record))
redis.call('EXPIRE', KEYS[1], ARGV[12])
redis.call('ZADD', KEYS[3], now, rid)
if in_conversation then
  redis.call('RPUSH', KEYS[9], rid)
  redis.call('EXPIRE', KEYS[9], ARGV[6])
end
for i = 19, 18 + 2 * n, 2 do append(KEYS[1], KEYS[2], '0', ARGV[13], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[2], ARGV[14])
if ARGV[10] ~= '' then redis.call('SET', KEYS[11], ARGV[10], 'EX', ARGV[11]) end
enqueue(KEYS[5], KEYS[6], KEYS[4], KEYS[7], ARGV[15], ARGV[16], now, rid, ARGV[17])
return {{'accepted'}}
"""
)


class Refusal(enum.StrEnum):
    """Why the script did not accept a turn; nothing was written."""

    CONVERSATION_NOT_FOUND = "conversation_not_found"  # missing, or another project's
    CLAIM_LOST = "claim_lost"  # the Idempotency-Key's claim passed to another request
    CONCURRENCY = "concurrency"  # the API key's concurrent turns are all taken
    QUEUE_FULL = "queue_full"
    CONVERSATION_LOCKED = "conversation_locked"  # a turn is in progress and the policy is `reject`


@dataclass(frozen=True)
class Slot:
    """A concurrent-turn slot to take from an API key's in-flight set."""

    key_id: str
    max_concurrent: int


@dataclass(frozen=True)
class ClaimMark:
    """An Idempotency-Key claim the accept marks accepted, if it is still this request's."""

    key: str
    accepted: str  # the claim's value once accepted
    ttl_s: int


@dataclass(frozen=True)
class NewTurn:
    """Everything the accept writes, rendered beforehand: once a turn is accepted no error may follow."""

    response_id: str
    project: str
    conversation_id: str | None
    conversation_lock: str
    record: dict[str, str | int]  # the response hash's fields
    first_events: list[tuple[str, str]]  # (type, encoded event): what the stream starts with

    def written(self) -> list[events.StreamEvent]:
        """The first events as the stream holds them once accepted (a new record's numbering starts at 0)."""
        return [
            events.StreamEvent(seq, kind, 0, events.numbered(seq, body))
            for seq, (kind, body) in enumerate(self.first_events)
        ]


class TurnAcceptor:
    """The script, registered once per Redis client."""

    def __init__(self, redis: ArqRedis, retention: Retention, queue_name: str, max_queue_depth: int) -> None:
        self.redis = redis
        self.retention = retention
        self.queue_name = queue_name
        self.max_queue_depth = max_queue_depth
        self._accept = redis.register_script(_ACCEPT)

    async def accept(self, turn: NewTurn, slot: Slot | None = None, claim: ClaimMark | None = None) -> Refusal | None:
        """Accepts the turn (None), or says why not."""
        rid, conv, r = turn.response_id, turn.conversation_id or "", self.retention
        now = timestamp_ms()  # arq's clock: the job must be due at once on every worker
        argv: list[str | int | bytes] = [
            rid, now, turn.project, conv, turn.conversation_lock, r.conversation_ttl_s,
            "" if slot is None else slot.max_concurrent, UNSTORED_GRACE_MS, self.max_queue_depth,
            "" if claim is None else claim.accepted, 0 if claim is None else claim.ttl_s,
            r.response_ttl_s, r.stream_maxlen, r.stream_ttl_s,
            job_bytes(self.redis, rid, now), self.redis.expires_extra_ms, MAX_WAKE_TOKENS,
            len(turn.first_events),
        ]  # fmt: skip
        for kind, body in turn.first_events:
            argv += [kind, body]
        for field, value in turn.record.items():
            argv += [field, value]
        reply = await self._accept(
            keys=[
                keys.response(rid),
                keys.events(rid),
                keys.ACTIVE_TURNS,
                self.queue_name,
                keys.arq_job(rid),
                keys.arq_result(rid),
                keys.QUEUE_WAKE,
                keys.conversation(conv),
                keys.conversation_turns(conv),
                keys.api_key_inflight("" if slot is None else slot.key_id),
                keys.idempotency("", "", "") if claim is None else claim.key,  # unused without a claim
            ],
            args=argv,
        )
        answer = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        return None if answer == "accepted" else Refusal(answer)
