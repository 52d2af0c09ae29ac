"""Delivers cancel requests to the turns running in this worker process.

One pub/sub subscription per process (not per turn). A turn registers before it starts, so a cancel
published between its start and its registration cannot slip through. Pub/sub forgets what it sent while
a subscriber was away (on a cluster, a subscriber's node may die and the broadcast with it), so after every
(re)subscription the sticky `cancel` field of each registered turn is read back; the same field is also seen
on every event flush, and read for every turn running here once a second (one pipelined read), so a turn that
writes nothing for a while (a tool running) still sees a missed cancel within a second.

A turn waiting out an upstream's Retry-After back on the queue runs nowhere: a cancel for a turn this
process does not run moves its job's due time to now (if it lay ahead), so the first worker free starts it,
sees the cancel and commits it at once instead of after the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq.utils import timestamp_ms
from redis.asyncio import Redis

from shared import keys, response_record
from shared.redis_conn import subscription
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
    def __init__(self, redis: Redis, outage: Outage, queue_name: str | None = None) -> None:
        self._redis = redis
        self._queue = queue_name
        self._hurried: set[asyncio.Task[None]] = set()
        self._outage = outage
        self._handles: dict[str, CancelHandle] = {}
        self._task: asyncio.Task[None] | None = None
        self._polling: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())
        self._polling = asyncio.create_task(self._poll_forever())
        # Usually immediate; if Redis is away the listener keeps retrying on its own.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=5)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._polling) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def register(self, response_id: str) -> CancelHandle:
        handle = self._handles[response_id] = CancelHandle()
        return handle

    def unregister(self, response_id: str) -> None:
        self._handles.pop(response_id, None)

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with subscription(self._redis, keys.CANCEL_CHANNEL) as pubsub:
                    await self._catch_up()
                    self._subscribed.set()
                    failures = 0
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message["data"]
                        response_id = data.decode() if isinstance(data, bytes) else data
                        handle = self._handles.get(response_id)
                        if handle is not None:
                            handle.request()
                        elif self._queue is not None:
                            task = asyncio.create_task(self._due_now(response_id))
                            self._hurried.add(task)
                            task.add_done_callback(self._hurried.discard)
            except asyncio.CancelledError:
                raise
            except TRANSIENT as exc:
                self._outage.failed(exc, "cancel subscription")
                await asyncio.sleep(self._outage.delay(failures))
                failures += 1
            except Exception:
                log.warning("cancel subscription lost; resubscribing", exc_info=True)
                await asyncio.sleep(1)

    async def _due_now(self, response_id: str) -> None:
        """A job due later (a turn waiting for its upstream) becomes due now; any other is left as it is."""
        assert self._queue is not None
        with contextlib.suppress(*TRANSIENT):
            queue = keys.queue(self._queue, keys.partition(response_id))
            await self._redis.zadd(queue, {keys.job_id(response_id): timestamp_ms()}, xx=True, lt=True)

    async def _catch_up(self) -> None:
        """Honours cancels requested for the turns running here, whether or not their signal arrived."""
        running = list(self._handles.items())
        if not running:
            return
        flags = await response_record.cancels_requested(self._redis, [response_id for response_id, _ in running])
        for (_, handle), requested in zip(running, flags, strict=True):
            if requested and not handle.requested:
                handle.request()

    async def _poll_forever(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(*TRANSIENT):  # the subscription reports outages; the next round retries
                await self._catch_up()
