"""Claiming arq jobs into a leased running set, so a poll never has to look at running jobs.

Stock arq leaves a running job in the queue's sorted set until it finishes, and every poll reads the
oldest `queue_read_limit` ids and re-checks each one (4 round trips) before it can start anything new:
with many long turns running a poll costs hundreds of commands, a new turn waits behind them, and past
the read window it is not seen at all. Here one script claims due jobs by moving them from the queue into
`keys.running_jobs(queue)` (score = lease expiry) in the same step that sets arq's in-progress marker, so
the queue holds only waiting jobs and a poll costs one round trip however many turns run.

arq's job format, enqueue, retry counter and health check are untouched. What this adds:
- a running turn renews its lease (the running set's score and the in-progress marker together);
- a finished job leaves the running set (with its turn's commit, usually); a job arq wants to run again
  goes back to the queue;
- leases that lapsed (their worker died) go back to the queue in the next claim of any worker.
Each claim carries a token (kept as the in-progress marker's value), so a worker that lost its lease to a
newer claim can no longer renew or release the job under it.
"""

from __future__ import annotations

from arq.utils import timestamp_ms
from redis.asyncio import Redis

from shared import keys
from shared.lua import scripts
from shared.queue import JobClaim
from shared.redis_conn import text


def now_ms() -> int:
    # arq's own clock (it rounds): a job enqueued this very millisecond must already count as due.
    return timestamp_ms()


class JobLeases:
    """Leases on the jobs of every partition's queue (one queue on one Redis): a claim takes from one
    partition; a job's renewal and finish go to its own partition's keys, named by its job id."""

    def __init__(self, redis: Redis, queue_name: str, lease_s: float) -> None:
        self.queue_name = queue_name
        self.lease_ms = int(lease_s * 1000)
        registered = scripts(redis)
        self._claim = registered.claim_jobs
        self._renew = registered.renew_lease
        self._finish = registered.end_job

    def _queue(self, job_id: str) -> str:
        return keys.queue(self.queue_name, keys.partition(keys.response_of_job(job_id)))

    async def claim(self, max_jobs: int, token_prefix: str, part: str = "") -> list[tuple[str, int, str]]:
        """Up to `max_jobs` due jobs of the partition `part` (its hash tag), now leased to the caller:
        (job id, queue score, claim token)."""
        if max_jobs <= 0:
            return []
        queue = keys.queue(self.queue_name, part)
        reply = await self._claim(
            keys=[queue, keys.running_jobs(queue)],
            args=[now_ms(), max_jobs, self.lease_ms, keys.arq_in_progress(""), token_prefix],
        )
        return [
            (text(reply[i]), int(float(reply[i + 1])), text(reply[i + 2])) for i in range(0, len(reply), 3)
        ]

    async def renew(self, job_id: str, token: str) -> bool:
        """Extends the lease; False once another claim owns the job (this attempt will be fenced off)."""
        result = await self._renew(
            keys=[keys.arq_in_progress(job_id), keys.running_jobs(self._queue(job_id))],
            args=[job_id, token, now_ms(), self.lease_ms],
        )
        return bool(result)

    async def finish(self, job_id: str, token: str, *, finished: bool, requeue_score: int | None = None) -> None:
        """The job leaves this worker: finished, or back on the queue at `requeue_score`."""
        claim = JobClaim(self.queue_name, job_id, token)
        await self._finish(
            keys=[*claim.keys(), claim.queue()],
            args=[job_id, token, "1" if finished else "", "" if requeue_score is None else requeue_score],
        )
