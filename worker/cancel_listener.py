"""Delivers cancel requests to the turns running in this worker process.

One pub/sub subscription per process (not per turn). A turn registers before it starts, so a cancel
published between its start and its registration cannot slip through. Pub/sub forgets what it sent while
a subscriber was away, so after every (re)subscription the sticky `cancel` field of each registered turn
is read back; the same field is also seen on every event flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from shared import keys, response_record
from worker.redis_retry import TRANSIENT, Outage

log = logging.getLogger(__name__)


class CancelHandle:
    def __init__(self) -> None:
        self.requested = False
        self.task: asyncio.Task[object] | None = None

    def request(self) -> None:
        self.requested = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


class CancelListener:
    def __init__(self, redis: Redis, outage: Outage) -> None:
        self._redis = redis
        self._outage = outage
        self._handles: dict[str, CancelHandle] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())
        # Usually immediate; if Redis is away the listener keeps retrying on its own.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def register(self, response_id: str) -> CancelHandle:
        handle = self._handles[response_id] = CancelHandle()
        return handle

    def unregister(self, response_id: str) -> None:
        self._handles.pop(response_id, None)

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.CANCEL_CHANNEL)
                    await self._catch_up()
                    self._subscribed.set()
                    failures = 0
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message["data"]
                        handle = self._handles.get(data.decode() if isinstance(data, bytes) else data)
                        if handle is not None:
                            handle.request()
            except asyncio.CancelledError:
                raise
            except TRANSIENT as exc:
                self._outage.failed(exc, "cancel subscription")
                await asyncio.sleep(self._outage.delay(failures))
                failures += 1
            except Exception:
                log.warning("cancel subscription lost; resubscribing", exc_info=True)
                await asyncio.sleep(1)

    async def _catch_up(self) -> None:
        """Honours cancels published while this process was not subscribed."""
        for response_id, handle in list(self._handles.items()):
            if await response_record.cancel_requested(self._redis, response_id):
                handle.request()
