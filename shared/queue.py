"""The job queue contract between the API (which enqueues) and the worker (which runs).

A turn's job is arq's own: its record (`arq:job:<id>`, serialised by arq's `serialize_job`) and its entry
in the queue's sorted set, so arq's worker runs it unchanged. Only the enqueue differs: arq's
`enqueue_job` spends three round trips (WATCH, EXISTS, MULTI/EXEC) and waking a worker a fourth; one
script does the same check-and-write and the wake in one (and the API's accept script, in
shared/turn_accept.py, does it as part of the accept).

A job that ran to its end is finished by the same Lua function wherever that happens: in the worker's
own job bookkeeping (worker/job_leases.py), or in the commit of the turn it ran (shared/turn_state.py),
which saves the worker a round trip per turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from shared import keys

RUN_TURN = "run_turn"  # the arq function name; one job per turn, job id = response id

# Wake tokens beyond this are pointless: each wakes one idle worker for one poll.
MAX_WAKE_TOKENS = 64

# Writes the job and its queue entry unless the job (or its result) already exists, as arq's enqueue_job
# refuses then, and wakes one idle worker. Returns 1 when enqueued.
ENQUEUE_FN = """
local function enqueue(job_key, result_key, queue, wake, job, ttl_ms, score, id, max_wake)
  if redis.call('EXISTS', job_key, result_key) > 0 then return 0 end
  redis.call('SET', job_key, job, 'PX', ttl_ms)
  redis.call('ZADD', queue, score, id)
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, max_wake - 1)
  return 1
end
"""

# KEYS: job record, job result, queue, wake list. ARGV: job bytes, job ttl ms, score, job id, max wake tokens.
_ENQUEUE = ENQUEUE_FN + """
return enqueue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]))
"""


# finish_job: what arq's finish_job does for a job that ran (its run counter and record go, so nothing runs
# it again; an abort request for it is dropped; no result is kept, nothing reads them), then the release of
# its lease. Keys as `JobClaim.keys()`. release_lease: the lease alone, only while the token is still the
# claim's, so a worker whose lease lapsed cannot release a newer claim of the same job; 1 if released.
FINISH_JOB_FN = """
local function release_lease(marker, running, job_id, token)
  if redis.call('GET', marker) ~= token then return 0 end
  redis.call('DEL', marker)
  redis.call('ZREM', running, job_id)
  return 1
end
local function finish_job(marker, running, retry, job, abort, job_id, token)
  redis.call('DEL', retry, job)
  redis.call('ZREM', abort, job_id)
  return release_lease(marker, running, job_id, token)
end
"""


@dataclass(frozen=True)
class JobClaim:
    """A worker's claim on a job: the job's lease is held under `token` (see worker/job_leases.py)."""

    queue_name: str
    job_id: str
    token: str

    def keys(self) -> list[str]:
        """In-progress marker, running set, arq's run counter, job record and abort set, as finish_job takes them."""
        return [
            keys.arq_in_progress(self.job_id),
            keys.running_jobs(self.queue_name),
            keys.arq_retry(self.job_id),
            keys.arq_job(self.job_id),
            keys.ARQ_ABORT_JOBS,
        ]


def job_bytes(redis: ArqRedis, response_id: str, enqueued_ms: int) -> bytes:
    """The turn's job as arq stores it."""
    return serialize_job(RUN_TURN, (response_id,), {}, None, enqueued_ms, serializer=redis.job_serializer)


async def enqueue_turn(redis: ArqRedis, queue_name: str, response_id: str) -> bool:
    """Enqueues the turn's job (False if it already exists) and wakes one idle worker for it."""
    now = timestamp_ms()
    script = redis.register_script(_ENQUEUE)
    enqueued = await script(
        keys=[keys.arq_job(response_id), keys.arq_result(response_id), queue_name, keys.QUEUE_WAKE],
        args=[job_bytes(redis, response_id, now), redis.expires_extra_ms, now, response_id, MAX_WAKE_TOKENS],
    )
    return bool(enqueued)

