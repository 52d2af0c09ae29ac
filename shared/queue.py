"""The job queue contract between the API (which enqueues) and the worker (which runs).

A turn's job is arq's own: its record (`arq:job:<id>`, serialised by arq's `serialize_job`) and its entry
in the queue's sorted set, so arq's worker runs it unchanged. Only the enqueue differs: arq's
`enqueue_job` spends three round trips (WATCH, EXISTS, MULTI/EXEC) and waking a worker a fourth; one
script does the same check-and-write and the wake in one (and the API's accept script, in
shared/turn_accept.py, does it as part of the accept).

A job that ran to its end is finished by the same Lua function (`finish_job` in shared/lua/lib.lua) wherever
that happens: in the worker's own job bookkeeping (worker/job_leases.py), or in the commit of the turn it ran
(shared/turn_state.py), which saves the worker a round trip per turn.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from arq.connections import ArqRedis
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from shared import keys, partitions
from shared.lua import scripts
from shared.redis_conn import UNAVAILABLE

log = logging.getLogger(__name__)

RUN_TURN = "run_turn"  # the arq function name; one job per turn, job id = keys.job_id(response id)

# Wake tokens beyond this are pointless on one Redis: each wakes one idle worker for one poll. On a cluster a
# token also names the partition to claim from, so more are kept: a worker coming free finds where work waits.
MAX_WAKE_TOKENS = 64
MAX_CLUSTER_WAKE_TOKENS = 10_000


@dataclass(frozen=True)
class ScriptWake:
    """The wake list an enqueue script is given, and the cap it keeps it at (0: the script pushes nothing)."""

    key: str
    cap: int


def script_wake(response_id: str) -> ScriptWake:
    """On one Redis the enqueue script pushes the wake token to the one list itself. On a cluster that list is in
    a slot of its own: the script pushes nothing and is given a key of the turn's own slot in its place, so it
    stays in one slot, and the token is pushed after it (`wake_after_enqueue`, or `WakeTokens` in the API)."""
    if partitions.enabled():
        return ScriptWake(keys.turn_wake(response_id), 0)
    return ScriptWake(keys.QUEUE_WAKE, MAX_WAKE_TOKENS)


async def wake_after_enqueue(redis: Redis, response_id: str) -> None:
    """After a script enqueued the turn's job: on a cluster, wakes one idle worker for it, naming its partition
    (on one Redis the script did). A lost token costs a delay, never the job: every worker's fallback poll
    visits each partition in turn (worker/arq_worker.py). So a failure here is logged, never raised: the turn
    is accepted, and an error now would make its client retry it into a second turn."""
    if partitions.enabled():
        await _push_tokens(redis, [partitions.digits_of(response_id)])


async def _push_tokens(redis: Redis, tokens: list[str]) -> None:
    try:
        # One command; the cap is kept by a trim only once it is passed (workers that are all busy).
        if await redis.lpush(keys.QUEUE_WAKE, *tokens) > MAX_CLUSTER_WAKE_TOKENS:
            await redis.ltrim(keys.QUEUE_WAKE, 0, MAX_CLUSTER_WAKE_TOKENS - 1)
    except UNAVAILABLE as exc:
        log.warning("no wake token for %d turns (%s); a worker's fallback poll picks them up", len(tokens), exc)


class WakeTokens:
    """`wake_after_enqueue` for a process that accepts many turns at once (the API): not awaited by the
    accept, and the tokens of every turn accepted while a push is on its way go in the next push together, in
    one command. A lone turn's token goes at once, as before; a burst of accepts costs a few pushes, not one
    round trip each."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._due: list[str] = []
        self._pushing: asyncio.Task[None] | None = None

    def after_enqueue(self, response_id: str) -> None:
        if not partitions.enabled():
            return
        self._due.append(partitions.digits_of(response_id))
        if self._pushing is None or self._pushing.done():
            self._pushing = asyncio.create_task(self._push())

    async def _push(self) -> None:
        while self._due:
            tokens, self._due = self._due, []
            await _push_tokens(self._redis, tokens)

    async def flush(self) -> None:
        """Waits for the tokens due to be pushed (at shutdown: none is left behind)."""
        if self._pushing is not None:
            await self._pushing


@dataclass(frozen=True)
class JobClaim:
    """A worker's claim on a job: the job's lease is held under `token` (see worker/job_leases.py)."""

    queue_name: str
    job_id: str
    token: str

    def queue(self) -> str:
        """The queue of the job's partition."""
        return keys.queue(self.queue_name, keys.partition(keys.response_of_job(self.job_id)))

    def keys(self) -> list[str]:
        """In-progress marker, running set, arq's run counter and job record, as finish_job takes them."""
        return [
            keys.arq_in_progress(self.job_id),
            keys.running_jobs(self.queue()),
            keys.arq_retry(self.job_id),
            keys.arq_job(self.job_id),
        ]


def job_bytes(redis: ArqRedis, response_id: str, conversation_id: str | None, enqueued_ms: int) -> bytes:
    """The turn's job as arq stores it. The conversation id rides along so the worker's start script can be
    given its conversation's keys without reading the record first."""
    return serialize_job(
        RUN_TURN, (response_id, conversation_id or ""), {}, None, enqueued_ms, serializer=redis.job_serializer
    )


async def enqueue_turn(redis: ArqRedis, queue_name: str, response_id: str, conversation_id: str | None) -> bool:
    """Enqueues the turn's job (False if it already exists) and wakes one idle worker for it."""
    now = timestamp_ms()
    job_id, wake = keys.job_id(response_id), script_wake(response_id)
    enqueued = await scripts(redis).enqueue_job(
        keys=[
            keys.arq_job(job_id), keys.arq_result(job_id), keys.queue(queue_name, keys.partition(response_id)),
            wake.key,
        ],
        args=[job_bytes(redis, response_id, conversation_id, now), redis.expires_extra_ms, now, job_id, wake.cap],
    )
    if enqueued:
        await wake_after_enqueue(redis, response_id)
    return bool(enqueued)

