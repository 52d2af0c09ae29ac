"""arq, as turnstream runs it: the one module that knows arq's internals.

turnstream keeps arq's job format, its worker's job running (timeouts, retries, `Retry(defer=...)`, shutdown
with `job_completion_wait`) and its key names; it replaces arq's polling, claiming and bookkeeping. What arq's
`Worker` does, and what this class does instead:

| arq's method             | here                                                                       |
|--------------------------|----------------------------------------------------------------------------|
| `main`                   | the service's client (one Redis or a cluster: shared/redis_conn.py), waiting|
|                          | for Redis instead of failing at start; then `_poll_iteration` forever       |
| `_poll_iteration`        | claims due jobs into leases (worker/job_leases.py), then blocks on a wake   |
| `start_jobs`             | not called: `_claim_and_start` starts what the claim returned             |
| `run_job`                | arq's, wrapped: a Redis outage in its bookkeeping does not stop the worker; |
|                          | its MULTI (read job, count try) runs as a pipeline on a cluster (one slot:  |
|                          | the job id carries its partition's tag; the lease makes the run exclusive)  |
| `finish_job`             | releases the lease or re-queues, in one script; nothing if the commit did   |
| `finish_failed_job`      | the same, finished                                                          |
| `close`                  | arq's, tolerating a Redis that is away                                      |
| `log_redis_info` (module)| one INFO read, not arq's INFO+DBSIZE pipeline (fakeredis has no INFO)       |

arq counts every run of a job against `max_tries`; a turn that goes back on the queue to wait out its
upstream's Retry-After takes that run back (`not_a_try`).

Where turnstream writes arq's data itself: the job record and its queue entry (shared/queue.py, with
arq's `serialize_job`, in the accept and enqueue scripts), arq's key names (shared/keys.py, from
`arq.constants`), and arq's finish bookkeeping (`finish_job` in shared/lua/lib.lua). arq's job aborts stay
off (`allow_abort_jobs`): a turn's cancel is its own (worker/cancel_listener.py), so arq's one fixed abort
set is never written. Nothing else in the service imports arq's worker.

Pickup: arq polls its queue every `poll_delay` (0.5 s by default), which adds ~250 ms to every first token.
Here the API pushes a token to a wake list on every enqueue and an idle worker BLPOPs it, so pickup takes a
few milliseconds; the BLPOP timeout keeps the ordinary poll as a fallback (deferred jobs, lost tokens, jobs
re-queued after a dead worker's lease lapsed).

Claims: a poll moves due jobs into a leased running set in one script (worker/job_leases.py) instead of
arq's per-job check of everything in the queue, running jobs included, so pickup costs the same with 2 or
300 turns running. arq's job format, run_job and retries are kept; its results are not (nothing reads
them). A turn's commit finishes its job in the same script (shared/turn_state.py) and drops the job's
claim, and a job with no claim left gets no bookkeeping here: one round trip per turn saved.

Outages: stock arq ends its main loop on the first Redis error. Here every poll, claim and job bookkeeping
step retries through the outage (see worker/redis_retry.py), and a worker stops only on a signal or on a
bug, never on a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys, metrics, partitions
from shared.redis_conn import text
from worker.job_leases import JobLeases, now_ms
from worker.redis_retry import TRANSIENT, Outage

log = logging.getLogger(__name__)


async def not_a_try(redis: Redis, job_id: str) -> None:
    """The job's current run does not count against arq's max_tries (arq incremented its counter at start)."""
    await redis.decr(keys.arq_retry(job_id))


class FastPickupWorker(Worker):
    def __init__(
        self,
        *args: Any,
        connect: Callable[[], Awaitable[ArqRedis]] | None = None,
        fallback_poll_s: float = 0.5,
        lease_s: float = 15.0,
        outage: Outage,
        **kwargs: Any,
    ) -> None:
        # arq's own sleep between polls is replaced by the blocking wait below.
        super().__init__(*args, poll_delay=0, keep_result=0, **kwargs)
        self.connect = connect  # the service's own client (one Redis or a cluster), instead of arq's create_pool
        self.fallback_poll_s = fallback_poll_s
        self.outage = outage
        self._poll_failures = 0
        self.lease_s = lease_s
        self.leases: JobLeases | None = None  # needs the pool, made in main()
        self.token_prefix = f"{uuid.uuid4().hex}:"
        # job id -> (claim token, queue score); shared with jobs through ctx so a turn can renew its lease.
        self.claims: dict[str, tuple[str, int]] = {}
        self.ctx["claims"] = self.claims
        # The partition the next claim takes from: the one a wake token named, else the next in turn.
        self._woken: str | None = None
        self._turn = 0

    async def main(self) -> None:
        """arq's main loop, except that a worker started before Redis (or during an outage) waits for it."""
        if self._pool is None:
            assert self.connect is not None, "a worker is given its client or how to connect"
            self._pool = await self.outage.call(self.connect, "worker start")
        log.info("starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions))
        await self.outage.call(self._log_redis_info, "worker start")
        self.ctx["redis"] = self.pool
        self.leases = JobLeases(self.pool, self.queue_name, self.lease_s)
        if self.on_startup:
            await self.on_startup(self.ctx)
        while True:
            await self._poll_iteration()

    async def _log_redis_info(self) -> None:
        """What arq logs at start, read with one INFO: arq pipelines INFO and DBSIZE, which the embedded dev
        mode's fakeredis does not have."""
        try:
            info = await self.pool.info()
        except ResponseError:
            log.info("redis: embedded fakeredis")
            return
        log.info(
            "redis_version=%s mem_usage=%s clients_connected=%s",
            info.get("redis_version", "?"), info.get("used_memory_human", "?"), info.get("connected_clients", "?"),
        )

    def _next_partition(self) -> str:
        """Where this poll claims: the partition a wake token named, else each partition in turn, so a job
        whose token was lost (or a lapsed lease, or a deferral come due) waits at most one round of fallback
        polls, and an idle worker's polling costs the same however many partitions there are."""
        if self._woken is not None:
            part, self._woken = self._woken, None
            return part
        every = keys.every_partition()
        self._turn = (self._turn + 1) % len(every)
        return every[self._turn]

    async def _poll_iteration(self) -> None:
        try:
            await self._claim_and_start(self._next_partition())
            await self.heart_beat()
            if self.allow_pick_jobs and self.job_counter < self.max_jobs:
                # Only a worker with a free slot takes a token, so the token wakes one that can run the job.
                woken = await self.pool.blpop([keys.QUEUE_WAKE], timeout=self.fallback_poll_s)  # type: ignore[arg-type]
                if woken and partitions.enabled():
                    self._woken = keys.partition_tag(text(woken[1]))
            else:
                await asyncio.sleep(self.fallback_poll_s)
        except TRANSIENT as exc:
            self.outage.failed(exc, "queue poll")
            await asyncio.sleep(self.outage.delay(self._poll_failures))
            self._poll_failures += 1
        else:
            self._poll_failures = 0
            self.outage.recovered()

    async def _claim_and_start(self, part: str) -> None:
        assert self.leases is not None
        if self.allow_pick_jobs:
            claimed = await self.leases.claim(self.max_jobs - self.job_counter, self.token_prefix, part)
            for job_id, score, token in claimed:
                running = self.tasks.get(job_id)
                if running is not None and not running.done():
                    # Claimed again while it runs here: its lease lapsed (a long outage, or a failover that
                    # lost the lease's last write). The turn runs on under the new claim, not twice.
                    log.info("job %s: claimed again while running here; it runs on under the new claim", job_id)
                    self.claims[job_id] = (token, score)
                    continue
                # The score is when the job became due (enqueued, re-queued or deferred to), in ms.
                metrics.QUEUE_WAIT.observe(max(0, now_ms() - score) / 1000)
                self.claims[job_id] = (token, score)
                self.job_counter += 1
                task = self.loop.create_task(self.run_job(job_id, score))
                task.add_done_callback(self._job_done)
                self.tasks[job_id] = task
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # an error in arq's own job handling is a bug: let it stop the worker

    def _job_done(self, _: object) -> None:
        self.job_counter -= 1

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's bookkeeping for a job that ran, plus leaving the running set (or going back to the queue)."""
        claim = self.claims.pop(job_id, None)
        if claim is None:
            return  # the turn's commit finished the job already
        token, score = claim
        assert self.leases is not None
        # Not finished (arq's Retry, or cancelled by a shutdown): back on the queue, due at once or after the
        # Retry's deferral (arq's incr_score is relative to the job's original score).
        requeue_score = None if finish else (score + incr_score if incr_score else now_ms())
        await self.leases.finish(job_id, token, finished=finish, requeue_score=requeue_score)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        claim = self.claims.pop(job_id, None)
        if claim is None:
            return  # the turn's commit finished the job already
        assert self.leases is not None
        await self.leases.finish(job_id, claim[0], finished=True)

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except TRANSIENT as exc:
            # The job's bookkeeping could not reach Redis. The job is still queued and its in-progress
            # mark lapses with the lease, so a poll picks it up again; the turn's own state decides what
            # a second run does (continue, or nothing if it already finished).
            self.outage.failed(exc, f"job {job_id} bookkeeping")

    async def close(self) -> None:
        # Shutting down while Redis is away must still exit cleanly; the health key expires by itself.
        with contextlib.suppress(*TRANSIENT):
            await super().close()
