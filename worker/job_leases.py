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
from shared.queue import FINISH_JOB_FN, JobClaim

# KEYS: queue, running set. ARGV: now ms, max jobs, lease ms, in-progress prefix, token prefix.
# Returns {job_id, score, token, ...} for each job claimed. Jobs whose lease lapsed (their worker died) go
# back on the queue first; finding them reads only the expired end of the running set, not every lease.
_CLAIM = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  if redis.call('EXISTS', ARGV[4] .. id) == 0 then
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], ARGV[1], id)
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local out = {}
for i = 1, #due, 2 do
  local id = due[i]
  local token = ARGV[5] .. id
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[3]), id)
  redis.call('SET', ARGV[4] .. id, token, 'PX', ARGV[3])
  table.insert(out, id)
  table.insert(out, due[i + 1])
  table.insert(out, token)
end
return out
"""

# KEYS: in-progress marker, running set. ARGV: job id, token, now ms, lease ms. Returns 1 if still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], 'XX', tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
return 1
"""

# arq's bookkeeping for a job that ran (its finish_job / finish_failed_job) and the lease's release, in one
# round trip. KEYS: JobClaim.keys(), then the queue. ARGV: job id, token, finished ('1' or ''), requeue
# score ('' = none). A job that is not finished goes back on the queue, if the lease was still ours.
_FINISH = FINISH_JOB_FN + """
if ARGV[3] == '1' then return finish_job(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2]) end
if release_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1]) end
return 1
"""


def now_ms() -> int:
    # arq's own clock (it rounds): a job enqueued this very millisecond must already count as due.
    return timestamp_ms()


class JobLeases:
    def __init__(self, redis: Redis, queue_name: str, lease_s: float) -> None:
        self.queue = queue_name
        self.running = keys.running_jobs(queue_name)
        self.lease_ms = int(lease_s * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._finish = redis.register_script(_FINISH)

    async def claim(self, max_jobs: int, token_prefix: str) -> list[tuple[str, int, str]]:
        """Up to `max_jobs` due jobs, now leased to the caller: (job id, queue score, claim token)."""
        if max_jobs <= 0:
            return []
        reply = await self._claim(
            keys=[self.queue, self.running],
            args=[now_ms(), max_jobs, self.lease_ms, keys.arq_in_progress(""), token_prefix],
        )
        return [
            (_text(reply[i]), int(float(reply[i + 1])), _text(reply[i + 2])) for i in range(0, len(reply), 3)
        ]

    async def renew(self, job_id: str, token: str) -> bool:
        """Extends the lease; False once another claim owns the job (this attempt will be fenced off)."""
        result = await self._renew(
            keys=[keys.arq_in_progress(job_id), self.running], args=[job_id, token, now_ms(), self.lease_ms]
        )
        return bool(result)

    async def finish(self, job_id: str, token: str, *, finished: bool, requeue_score: int | None = None) -> None:
        """The job leaves this worker: finished, or back on the queue at `requeue_score`."""
        claim = JobClaim(self.queue, job_id, token)
        await self._finish(
            keys=[*claim.keys(), self.queue],
            args=[job_id, token, "1" if finished else "", "" if requeue_score is None else requeue_score],
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
