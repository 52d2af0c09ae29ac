"""Finds accepted turns that nothing will ever run, and runs them again (or fails them, out of attempts).

A turn can lose its arq job: arq deletes a job whose function raised, a job whose worker died before its
lease began is only as good as its in-progress marker, and an operator can flush a queue. Every unfinished
turn is indexed in `keys.ACTIVE_TURNS` from accept to commit; every `sweep_interval_s` one worker of the
fleet (whoever holds the sweeper lock) walks that index. (Jobs whose lease lapsed go back on the queue in
every worker's claim, see worker/job_leases.py.) A turn that is queued or in progress, with no in-progress
marker (no live lease) and no job waiting in the queue, is stranded: its job is enqueued again.
The turn's own state machine makes that safe: a re-run continues from what was streamed, and a turn that
already finished is left alone. Entries for turns that finished or vanished are dropped from the index.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from arq.connections import ArqRedis

from shared import keys, response_record
from shared.lua import scripts
from shared.models import Status
from shared.queue import enqueue_turn
from shared.response_object import build_response
from shared.settings import Settings
from shared.turn_state import TurnState
from worker.redis_retry import TRANSIENT, Outage
from worker.turn import gave_up

log = logging.getLogger(__name__)

_BATCH = 200
# A turn younger than this may still be between its record and its enqueue in the API.
_GRACE_MS = 10_000


@dataclass
class SweepReport:
    scanned: int = 0
    requeued: int = 0
    failed: int = 0


class Sweeper:
    def __init__(self, redis: ArqRedis, settings: Settings, state: TurnState, outage: Outage) -> None:
        self.redis = redis
        self.settings = settings
        self.state = state
        self.outage = outage
        self.owner = uuid.uuid4().hex
        self._scan = scripts(redis).sweep_active_turns

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                if await self._acquire():
                    report = await self.sweep()
                    if report.requeued or report.failed:
                        log.warning("sweeper: %d stranded turns re-queued, %d failed", report.requeued, report.failed)
            except TRANSIENT as exc:
                self.outage.failed(exc, "sweep")

    async def _acquire(self) -> bool:
        """One sweeper at a time across the fleet; the lock outlives a sweep interval so the holder keeps it."""
        ttl_ms = int(self.settings.sweep_interval_s * 3000)
        if await self.redis.set(keys.SWEEPER_LOCK, self.owner, nx=True, px=ttl_ms):
            return True
        holder = await self.redis.get(keys.SWEEPER_LOCK)
        if holder is not None and holder.decode() == self.owner:
            await self.redis.pexpire(keys.SWEEPER_LOCK, ttl_ms)
            return True
        return False

    async def sweep(self) -> SweepReport:
        report = SweepReport()
        for part in keys.every_partition():  # one on one Redis
            await self._sweep(part, report)
        return report

    async def _sweep(self, part: str, report: SweepReport) -> None:
        """Sweeps one partition's active index."""
        start = 0
        while True:
            now_ms = int(time.time() * 1000)
            reply = await self._scan(
                keys=[keys.active_turns(part), keys.queue(self.settings.queue_name, part)],
                args=[keys.arq_job(""), keys.arq_in_progress(""), now_ms, _GRACE_MS, start, _BATCH],
            )
            scanned, removed, stranded = int(reply[0]), int(reply[1]), [r.decode() for r in reply[2:]]
            report.scanned += scanned
            for response_id in stranded:
                if await self._rescue(response_id):
                    report.requeued += 1
                else:
                    report.failed += 1
            if scanned < _BATCH:
                return
            start += scanned - removed  # removed entries shifted the ranks after them down

    async def _rescue(self, response_id: str) -> bool:
        """Enqueues a stranded turn again, or fails it once it has used up its attempts. True if re-queued."""
        record = await response_record.load(self.redis, response_id)
        if record is None or record.status.terminal:
            return True
        tries = await response_record.tries(self.redis, response_id)
        if record.status == Status.IN_PROGRESS and tries >= self.settings.job_max_tries:
            outcome = gave_up(tries)
            await self.state.finish(
                response_id,
                expect=Status.IN_PROGRESS,
                attempt=None,
                final=Status.FAILED,
                response=build_response(record.request, Status.FAILED, outcome),
                conversation_id=record.request.conversation_id,
                items=[],
                project=record.request.project,
                key_id=record.request.key_id,
            )
            return False
        # arq refuses a job id whose result it still keeps, and stops running one past its own try count;
        # the turn's tries (attempts less its waits for the upstream) bound re-runs here.
        job_id = keys.job_id(response_id)
        await self.redis.delete(keys.arq_job(job_id), keys.arq_result(job_id), keys.arq_retry(job_id))
        await enqueue_turn(self.redis, self.settings.queue_name, response_id, record.request.conversation_id)
        log.info("sweeper: turn %s had no job; enqueued again", response_id)
        return True
