"""This worker's heartbeat (see shared/fleet.py): who it is, where, and how many turns it runs right now."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from redis.asyncio import Redis

from shared import fleet
from shared.settings import Settings
from worker.redis_retry import TRANSIENT, Outage

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, redis: Redis, settings: Settings, running: Callable[[], int], outage: Outage) -> None:
        self.redis = redis
        self.settings = settings
        self.running = running
        self.outage = outage
        host = socket.gethostname()
        self.worker_id = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.host = host
        self.started_at = time.time()

    def record(self) -> fleet.WorkerBeat:
        return fleet.WorkerBeat(
            id=self.worker_id,
            host=self.host,
            pid=os.getpid(),
            queue=self.settings.queue_name,
            running=self.running(),
            max_jobs=self.settings.max_jobs,
            started_at=self.started_at,
            beat_at=time.time(),
        )

    async def first(self) -> None:
        """The first beat, retried until Redis answers. The worker's start awaits it before publishing its agents,
        so an API that lists a worker's model also finds the worker alive (it refuses turns while none is)."""
        await self.outage.call(self._beat, "heartbeat")

    async def run_forever(self) -> None:
        """The beats after the first, one every TURNSTREAM_WORKER_HEARTBEAT_S."""
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_s)
            try:
                await self._beat()
            except TRANSIENT as exc:
                # The poll loop reports the outage and its end; a missed beat only ages this worker's record.
                self.outage.failed(exc, "heartbeat")

    async def _beat(self) -> None:
        await fleet.beat(self.redis, self.record(), self.settings.worker_heartbeat_ttl_s)

    async def leave(self) -> None:
        """Stopping: readers stop counting this worker at once instead of after the TTL."""
        try:
            await fleet.leave(self.redis, self.worker_id)
        except TRANSIENT as exc:
            log.info("could not remove this worker's heartbeat (%s); it expires by itself", exc)
