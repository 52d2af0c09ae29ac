"""A turn's state machine in Redis, as atomic Lua scripts the API and the worker share.

(accept) ──► queued ──start──► in_progress ──finish──► completed | failed | cancelled | incomplete
                 └──────────────finish (cancel before pickup)──────┘

The accept, which writes a turn's record as queued, is the API's script (shared/turn_accept.py).

Every transition and every event write checks the state it expects, so a re-run, a zombie worker of an
older attempt, or a cancel racing a pickup can never write twice or out of turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

from shared import events, keys, metrics, webhooks
from shared.key_slots import KeySlots
from shared.lua import NO_WAIT, Durability, call, scripts
from shared.models import DEFAULT_PROJECT, Status
from shared.queue import JobClaim
from shared.redis_conn import UNAVAILABLE, text
from shared.settings import Settings
from shared.stored_form import pack_events, pack_json, unpack_json


def _stand_ins(response_id: str, conversation_id: str | None) -> tuple[str, JobClaim]:
    """What a script is given for a turn of no conversation, or a commit that finishes no job: keys it never
    touches, named after the turn's own id so that (on a cluster) they are in the turn's slot."""
    return conversation_id or response_id, JobClaim(queue_name="", job_id=keys.job_id(response_id), token="")


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
    # A first run's stream as the start left it (asked for with `entries=True`): every entry, in order.
    entries: list[events.StreamEvent] | None = None
    continues: bool = False  # picks the turn up after its previous attempt waited on the queue (see `defer`)
    waits: int = 0  # the turn's attempts that were such pickups

    @property
    def tries(self) -> int:
        """Attempts that count against TURNSTREAM_JOB_MAX_TRIES: a pickup after a wait is not a re-run."""
        return self.attempt - self.waits


@dataclass(frozen=True)
class Retention:
    stream_ttl_s: int
    response_ttl_s: int
    conversation_ttl_s: int
    stream_maxlen: int
    # A finished turn's stream as one compact entry, its Request/Response JSON compressed (shared/stored_form.py).
    compact: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            stream_ttl_s=settings.stream_ttl_s,
            response_ttl_s=settings.response_ttl_s,
            conversation_ttl_s=settings.conversation_ttl_s,
            stream_maxlen=settings.stream_maxlen,
            compact=settings.compact_finished_turns,
        )


class TurnState:
    """The scripts, registered once per Redis client."""

    def __init__(self, redis: Redis, retention: Retention, durability: Durability = NO_WAIT) -> None:
        self.redis = redis
        self.retention = retention
        self.durability = durability  # for the commit
        self.key_slots = KeySlots(redis)
        registered = scripts(redis)
        self._append = registered.append_events
        self._start = registered.start_turn
        self._defer = registered.defer_turn
        self._finish = registered.finish_turn

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
        if isinstance(self.redis, RedisCluster):
            # A cluster pipeline takes no scripts: the appends go out together, each to its slot's node.
            replies = await asyncio.gather(
                *(
                    self._append(keys=[keys.response(rid), keys.events(rid)], args=self._append_args(a, b, bid))
                    for rid, a, b, bid in writes
                ),
                return_exceptions=True,
            )
            for reply in replies:
                if isinstance(reply, UNAVAILABLE):
                    raise reply
            return [_outcome(reply) for reply in replies]
        async with self.redis.pipeline(transaction=False) as pipe:
            for response_id, attempt, batch, batch_id in writes:
                pipe.evalsha(
                    self._append.sha, 2, keys.response(response_id), keys.events(response_id),
                    *self._append_args(attempt, batch, batch_id),
                )
            replies = await pipe.execute(raise_on_error=False)
        if any(isinstance(r, NoScriptError) for r in replies):
            # A restarted Redis forgets its scripts: load it once and write the entries that were refused.
            await self.redis.script_load(self._append.script)
            retried = [w for w, r in zip(writes, replies, strict=True) if isinstance(r, NoScriptError)]
            again = iter(await self.append_many(retried))
            replies = [next(again) if isinstance(r, NoScriptError) else r for r in replies]
        return [_outcome(reply) for reply in replies]

    def _append_args(self, attempt: int, batch: list[events.Event], batch_id: str) -> list[Any]:
        argv: list[Any] = [attempt, self.retention.stream_maxlen, self.retention.stream_ttl_s, batch_id]
        for event in batch:
            argv += [event["type"], events.encode(event)]
        return argv

    async def start(self, response_id: str, conversation_id: str | None) -> Started:
        """Moves the turn to in_progress as a new attempt, unless it finished, is gone, or must wait.

        `conversation_id` is the turn's own (its job carries it): the script needs its turn queue's key.
        With compact retention a first run also gets its stream's entries, for `finish(stream=...)`."""
        r = self.retention
        conv, _ = _stand_ins(response_id, conversation_id)
        status, attempt, cancel, request, waiting, announced, entries, continues, waits = await self._start(
            keys=[keys.response(response_id), keys.events(response_id), keys.conversation_turns(conv)],
            args=[
                r.stream_maxlen, r.stream_ttl_s, events.IN_PROGRESS, response_id, conversation_id or "",
                "1" if r.compact else "",
            ],
        )
        return Started(
            text(status),
            int(attempt),
            _flag(cancel),
            unpack_json(request) or None,
            bool(waiting),
            bool(announced),
            [events.decode_entry(fields) for _, fields in _entry_pairs(entries)] if entries else None,
            bool(continues),
            int(waits),
        )

    async def defer(self, response_id: str, attempt: int) -> bool:
        """Marks the turn as going back on the queue after `attempt` to wait for its upstream, so that the next
        start counts the pickup as a continuation, not a try; False if `attempt` no longer owns the turn."""
        return bool(await self._defer(keys=[keys.response(response_id)], args=[attempt]))

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
        key_id: str | None = None,
        pending: Sequence[events.Event] = (),
        job: JobClaim | None = None,
        stream: Sequence[events.StreamEvent] | None = None,
    ) -> bool:
        """Commits the turn's end, once: True if committed, False if it was not in the expected state.

        `pending` events are written just before the terminal event; the `job` the turn ran under is
        finished with the commit (and left alone when the commit is refused). `stream` is every entry the
        turn's stream holds, as the committing attempt knows it (it wrote them or read them): given that and
        compact retention, the stream is replaced by one compact entry of all of it, terminal event
        included, when Redis confirms the stream holds exactly that many entries up to the same sequence
        number (the attempt fences every other writer off, so same count means same entries).
        """
        terminal = events.lifecycle(events.TERMINAL_TYPE_FOR_STATUS[final.value], response)
        conv, no_job = _stand_ins(response_id, conversation_id)
        part = keys.partition(response_id)
        r = self.retention
        pending_args: list[str] = []
        for event in pending:
            pending_args += [event["type"], events.encode(event)]
        response_json, terminal_json = events.encode(response), events.encode(terminal)
        compact, known_seq = b"", ""
        # Only a stream known whole (sequence numbers 0 to n-1: none trimmed) can stand for the real one.
        if r.compact and stream and attempt is not None and stream[0].seq == 0 and stream[-1].seq == len(stream) - 1:
            pairs = [*zip(pending_args[::2], pending_args[1::2], strict=True), (terminal["type"], terminal_json)]
            compact, known_seq = _compact_stream(stream, attempt, pairs), str(len(stream) - 1)
        usage = response.get("usage")
        tokens = (
            [int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)]
            if isinstance(usage, dict)
            else ["", ""]
        )
        committed = await call(
            self.redis,
            self._finish,
            keys=[
                keys.response(response_id),
                keys.events(response_id),
                keys.conversation_items(conv),
                keys.conversation_turns(conv),
                keys.conversation(conv),
                keys.active_turns(part),
                keys.webhook_outbox(part),
                keys.turn_wake(response_id),
                keys.project_usage(project, part),
                *(job or no_job).keys(),
                keys.events_scratch(response_id),
            ],
            args=[
                expect.value,
                "" if attempt is None else attempt,
                r.stream_maxlen,
                stream_ttl_s or r.stream_ttl_s,
                response_ttl_s or r.response_ttl_s,
                r.conversation_ttl_s,
                final.value,
                pack_json(response_json) if r.compact else response_json,
                terminal["type"],
                terminal_json,
                response_id,
                webhooks.outbox_entry(project, response_id, final.value, response),
                job.job_id if job else "",
                job.token if job else "",
                "1" if await webhooks.has_endpoints(self.redis, project) else "",
                *tokens,
                compact,
                known_seq,
                len(pending),
                *pending_args,
                *(events.encode(item) for item in items),
            ],
            durability=self.durability,
        )
        if committed:
            metrics.turn_finished(final.value, str(response.get("model", "")), project)
            if key_id:
                await self.key_slots.release(key_id, response_id)
        return bool(committed)


def _compact_stream(stream: Sequence[events.StreamEvent], attempt: int, tail: list[tuple[str, str]]) -> bytes:
    """The compact entry's blob: the stream, then the `tail` (type, encoded event) the commit writes,
    numbered on from it as the commit script numbers them, under the committing attempt."""
    written = [
        events.StreamEvent(seq, kind, attempt, events.numbered(seq, body))
        for seq, (kind, body) in enumerate(tail, start=len(stream))
    ]
    return pack_events([*stream, *written])


def _entry_pairs(entries: list[Any]) -> list[tuple[Any, dict[bytes, bytes]]]:
    """XRANGE as Lua returns it (each entry an id and a flat field list) as redis-py's XRANGE gives it."""
    return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in entries]


def _appended(result: list[Any]) -> bool:
    """The APPEND_EVENTS reply as the cancel flag, or StaleTurn when the write was refused."""
    if int(result[0]) < 0:
        raise StaleTurn(int(result[0]))
    return _flag(result[1])




def _outcome(reply: Any) -> bool | Exception:
    """One append's reply as `append_many` gives it: the cancel flag, or the exception it raised."""
    if isinstance(reply, Exception | bool):
        return reply
    try:
        return _appended(reply)
    except StaleTurn as stale:
        return stale


def _flag(value: bytes | str | None) -> bool:
    return bool(value) and text(value) not in ("", "0")  # type: ignore[arg-type]
