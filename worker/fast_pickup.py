"""An arq worker that wakes on enqueue instead of sleeping between polls, and rides out Redis outages.

Pickup: arq polls its queue every `poll_delay` (0.5 s by default), which adds ~250 ms to every first token.
Here the API pushes a token to a wake list on every enqueue and an idle worker BLPOPs it, so pickup takes a
few milliseconds; the BLPOP timeout keeps the ordinary poll as a fallback (deferred jobs, lost tokens, jobs
re-queued after a dead worker's lease lapsed).

Outages: stock arq ends its main loop on the first Redis error, and a claim cut off half-way leaks one of
`max_jobs` slots for good. Here every poll, claim and job bookkeeping step retries through the outage (see
worker/redis_retry.py), and a worker stops only on a signal or on a bug, never on a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import arq.worker
from arq.connections import create_pool
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import ResponseError, WatchError

from shared import keys
from worker.redis_retry import TRANSIENT, Outage

log = logging.getLogger(__name__)


class FastPickupWorker(Worker):
    def __init__(
        self, *args: Any, fallback_poll_s: float = 0.5, lease_s: float = 15.0, outage: Outage, **kwargs: Any
    ) -> None:
        # arq's own sleep between polls is replaced by the blocking wait below.
        super().__init__(*args, poll_delay=0, **kwargs)
        self.fallback_poll_s = fallback_poll_s
        self.outage = outage
        self._poll_failures = 0
        # arq marks a claimed job in progress for the whole job timeout (a day here); the turn renews this
        # as a short lease once it runs, so a worker that dies right after claiming holds the job only briefly.
        self.in_progress_timeout_s = lease_s

    async def main(self) -> None:
        """arq's main loop, except that a worker started before Redis (or during an outage) waits for it."""
        if self._pool is None:
            self._pool = await self.outage.call(
                lambda: create_pool(
                    self.redis_settings,
                    job_deserializer=self.job_deserializer,
                    job_serializer=self.job_serializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                ),
                "worker start",
            )
        log.info("starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions))
        # Looked up on the module at call time: the embedded dev mode replaces it (fakeredis has no INFO).
        await self.outage.call(lambda: arq.worker.log_redis_info(self.pool, log.info), "worker start")
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        while True:
            await self._poll_iteration()

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
            if self.allow_pick_jobs and self.job_counter < self.max_jobs:
                # Only a worker with a free slot takes a token, so the token wakes one that can run the job.
                await self.pool.blpop([keys.QUEUE_WAKE], timeout=self.fallback_poll_s)  # type: ignore[arg-type]
            else:
                await asyncio.sleep(self.fallback_poll_s)
        except TRANSIENT as exc:
            self.outage.failed(exc, "queue poll")
            await asyncio.sleep(self.outage.delay(self._poll_failures))
            self._poll_failures += 1
        else:
            self._poll_failures = 0
            self.outage.recovered()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's claim, with the slot given back when Redis fails part-way (arq's own version leaks it)."""
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            try:
                score = await self._claim(job_id)
            except BaseException:
                self._release_sem_dec_counter_on_complete()
                raise
            if score is None:
                self._release_sem_dec_counter_on_complete()
                continue
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _claim(self, job_id: str) -> int | None:
        """Marks the job in progress unless another worker has it; returns its queue score when claimed."""
        in_progress_key = in_progress_key_prefix + job_id
        async with self.pool.pipeline(transaction=True) as pipe:
            await pipe.watch(in_progress_key)
            ongoing = await pipe.exists(in_progress_key)
            score = await pipe.zscore(self.queue_name, job_id)
            if ongoing or not score or score > timestamp_ms():
                return None  # running elsewhere, finished, or re-queued with a delay
            pipe.multi()
            pipe.psetex(in_progress_key, int(self.in_progress_timeout_s * 1000), b"1")
            try:
                await pipe.execute()
            except (ResponseError, WatchError):
                return None  # another worker claimed it between the check and the write
        return int(score)

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
