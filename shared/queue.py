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


def wake_tokens() -> int:
    """The wake-list cap an enqueue script applies; 0 on a cluster, where the caller pushes the token itself."""
    return 0 if partitions.enabled() else MAX_WAKE_TOKENS


def script_wake_key(response_id: str) -> str:
    """The wake list an enqueue script is given: the one list, on one Redis. On a cluster the script pushes no
    token (`wake_tokens()` is 0) and is given a key of the turn's own slot in its place, so it stays in one."""
    return keys.turn_wake(response_id) if partitions.enabled() else keys.QUEUE_WAKE


async def wake_workers(redis: Redis, response_id: str) -> None:
    """Wakes one idle worker for the turn's job, naming its partition (on a cluster; the wake list is in a slot
    of its own, so the enqueue cannot push it). A lost token costs a delay, never the job: every worker's
    fallback poll visits each partition in turn (worker/arq_worker.py). So a failure here is logged, never
    raised: the turn is accepted, and an error now would make its client retry it into a second turn."""
    try:
        # One command a turn; the cap is kept by a trim only once it is passed (workers that are all busy).
        if await redis.lpush(keys.QUEUE_WAKE, partitions.digits_of(response_id)) > MAX_CLUSTER_WAKE_TOKENS:
            await redis.ltrim(keys.QUEUE_WAKE, 0, MAX_CLUSTER_WAKE_TOKENS - 1)
    except UNAVAILABLE as exc:
        log.warning("no wake token for %s (%s); a worker's fallback poll picks it up", response_id, exc)

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
    job_id, part = keys.job_id(response_id), keys.partition(response_id)
    enqueued = await scripts(redis).enqueue_job(
        keys=[
            keys.arq_job(job_id), keys.arq_result(job_id), keys.queue(queue_name, part), script_wake_key(response_id)
        ],
        args=[
            job_bytes(redis, response_id, conversation_id, now), redis.expires_extra_ms, now, job_id, wake_tokens(),
        ],
    )
    if enqueued and part:
        await wake_workers(redis, response_id)
    return bool(enqueued)

