"""Accepting a turn: every check and every write of the accept in one atomic script, one round trip (two with
an API key's concurrent-turn limit).

First, for a caller with a key, a slot of the key's concurrent turns (else 429), taken by a script of its own
in the key's own slot (shared/key_slots.py: on a cluster a key's turns are in every partition) and given back
if the accept then refuses the turn. Then the accept's checks, in the order a client sees their answers:
  the conversation exists and is the caller's (else 404) → an Idempotency-Key claim is still this
  request's (else 409) → the queue has room (else 503) → the conversation has no turn in progress under
  `conversation_lock: reject` (else 409).
Then the writes: under `interrupt` and `rollback`, the stop of every turn ahead in the conversation
(queued ones finished as cancelled, running ones told to stop; see stop_turns_ahead in lib.lua); the record,
the conversation's turn queue, the active index (the sweeper's), `response.created` (and `response.queued`
for background turns), the claim marked accepted, arq's job and, on one Redis, the wake token for an idle
worker (on a cluster the wake list is in another slot: pushed after, best-effort and batched with the
process's other accepts, see shared/queue.py).

Nothing is written unless every check passes, so a refused turn leaves nothing to undo; and a turn the
script wrote is whole, so no failure afterwards can leave a record without its job, or a conversation
locked by a turn that never runs. Every key the script is given is in the turn's partition: one slot.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from arq.connections import ArqRedis
from arq.utils import timestamp_ms

from shared import events, keys, webhooks
from shared.key_slots import KeySlots
from shared.lua import NO_WAIT, Durability, call, scripts
from shared.queue import WakeTokens, job_bytes, script_wake
from shared.response_record import Field
from shared.stored_form import pack_json
from shared.turn_state import Retention

# The record's JSON values, stored compressed (shared/stored_form.py).
_JSON_FIELDS = frozenset({Field.REQUEST, Field.RESPONSE})


class Refusal(enum.StrEnum):
    """Why the script did not accept a turn; nothing was written."""

    CONVERSATION_NOT_FOUND = "conversation_not_found"  # missing, or another project's
    CLAIM_LOST = "claim_lost"  # the Idempotency-Key's claim passed to another request
    CONCURRENCY = "concurrency"  # the API key's concurrent turns are all taken
    QUEUE_FULL = "queue_full"
    CONVERSATION_LOCKED = "conversation_locked"  # a turn is in progress and the policy is `reject`


@dataclass(frozen=True)
class Accepted:
    """The turn was accepted; `stopped` turns ahead of it were stopped by its `interrupt`/`rollback`."""

    stopped: int = 0


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
    """Accepts turns with the accept script (shared/lua/accept_turn.lua)."""

    def __init__(
        self,
        redis: ArqRedis,
        retention: Retention,
        queue_name: str,
        max_queue_depth: int,
        durability: Durability = NO_WAIT,
    ) -> None:
        self.redis = redis
        self.durability = durability
        self.retention = retention
        self.queue_name = queue_name
        self.max_queue_depth = max_queue_depth
        self._accept = scripts(redis).accept_turn
        self.key_slots = KeySlots(redis)
        self.wake_tokens = WakeTokens(redis)

    async def accept(
        self, turn: NewTurn, slot: Slot | None = None, claim: ClaimMark | None = None
    ) -> Refusal | Accepted:
        """Accepts the turn, or says why not."""
        rid = turn.response_id
        if slot is not None and not await self.key_slots.take(slot.key_id, rid, slot.max_concurrent):
            return Refusal.CONCURRENCY
        # Should the accept fail on its way (its answer lost), the turn may be stored or not: the slot stays,
        # to be repaired if the turn is not there (shared/key_slots.py).
        outcome = await self._run(turn, claim)
        if slot is not None and isinstance(outcome, Refusal):
            await self.key_slots.release(slot.key_id, rid)
        if isinstance(outcome, Accepted):
            self.wake_tokens.after_enqueue(rid)
        return outcome

    async def _run(self, turn: NewTurn, claim: ClaimMark | None) -> Refusal | Accepted:
        rid, conv, r = turn.response_id, turn.conversation_id or "", self.retention
        part, job_id, wake = keys.partition(rid), keys.job_id(rid), script_wake(rid)
        stopping = bool(conv) and turn.conversation_lock in ("interrupt", "rollback")
        # Turns it stops are announced to the project's webhooks like any finished turn.
        announce = stopping and await webhooks.has_endpoints(self.redis, turn.project)
        now = timestamp_ms()  # arq's clock: the job must be due at once on every worker
        argv: list[str | int | bytes] = [
            rid, now, turn.project, conv, turn.conversation_lock, r.conversation_ttl_s, "1" if announce else "",
            self.max_queue_depth, "" if claim is None else claim.accepted, 0 if claim is None else claim.ttl_s,
            r.response_ttl_s, r.stream_maxlen, r.stream_ttl_s,
            job_bytes(self.redis, rid, turn.conversation_id, now), self.redis.expires_extra_ms, wake.cap,
            len(turn.first_events),
        ]  # fmt: skip
        for kind, body in turn.first_events:
            argv += [kind, body]
        for field, value in turn.record.items():
            argv += [field, pack_json(str(value)) if r.compact and field in _JSON_FIELDS else value]
        reply = await call(
            self.redis,
            self._accept,
            keys=[
                keys.response(rid),
                keys.events(rid),
                keys.active_turns(part),
                keys.queue(self.queue_name, part),
                keys.arq_job(job_id),
                keys.arq_result(job_id),
                wake.key,
                keys.conversation(conv or rid),  # unused without a conversation; named in the turn's slot
                keys.conversation_turns(conv or rid),
                keys.idempotency("", "", "", part) if claim is None else claim.key,  # unused without a claim
                keys.webhook_outbox(part),
                keys.project_usage(turn.project, part),
            ],
            args=argv,
            durability=self.durability,
        )
        answer = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        return Accepted(stopped=int(reply[1])) if answer == "accepted" else Refusal(answer)
