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

from dataclasses import dataclass

from arq.connections import ArqRedis
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from shared import keys
from shared.lua import scripts

RUN_TURN = "run_turn"  # the arq function name; one job per turn, job id = response id

# Wake tokens beyond this are pointless: each wakes one idle worker for one poll.
MAX_WAKE_TOKENS = 64

@dataclass(frozen=True)
class JobClaim:
    """A worker's claim on a job: the job's lease is held under `token` (see worker/job_leases.py)."""

    queue_name: str
    job_id: str
    token: str

    def keys(self) -> list[str]:
        """In-progress marker, running set, arq's run counter and job record, as finish_job takes them."""
        return [
            keys.arq_in_progress(self.job_id),
            keys.running_jobs(self.queue_name),
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
    enqueued = await scripts(redis).enqueue_job(
        keys=[keys.arq_job(response_id), keys.arq_result(response_id), queue_name, keys.QUEUE_WAKE],
        args=[
            job_bytes(redis, response_id, conversation_id, now), redis.expires_extra_ms, now, response_id,
            MAX_WAKE_TOKENS,
        ],
    )
    return bool(enqueued)

