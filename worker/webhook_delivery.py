"""Delivers webhooks from the Redis outbox: at least once, retried with backoff, never in a turn's way.

Every worker runs one loop. A turn's commit pushes an outbox entry (shared/turn_state.py); a loop
expands it into one delivery per subscribed endpoint, atomically with popping it, so an entry is
expanded exactly once (a worker killed before that leaves it in the outbox for the next one). Deliveries
wait in a sorted set by due time; claiming one moves it a lease into the future, so a worker killed
mid-delivery leaves it to be retried when the lease lapses. A failed attempt is retried after the next of
TURNSTREAM_WEBHOOK_RETRY_DELAYS_S (over a day by default); after the last one the delivery goes to the
dead-letter list. Each attempt is signed afresh (Standard Webhooks: the timestamp is the attempt's) over
the same body under the same `webhook-id`, so a receiver that saw it before can drop it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

import httpx
from redis.asyncio import Redis

from shared import keys, metrics, webhooks
from shared.lua import scripts
from shared.redis_conn import text
from shared.settings import Settings
from worker.redis_retry import TRANSIENT, Outage

log = logging.getLogger(__name__)

_EXPAND_BATCH = 100

class WebhookDelivery:
    def __init__(
        self, redis: Redis, settings: Settings, outage: Outage, http: httpx.AsyncClient | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.outage = outage
        self.delays_s = settings.webhook_retry_delays_s
        # The request may take its whole timeout; the lease covers that with room for the bookkeeping.
        self.lease_ms = int((2 * settings.webhook_timeout_s + 1) * 1000)
        self.inflight: set[asyncio.Task[None]] = set()
        registered = scripts(redis)
        self._expand = registered.expand_webhook
        self._claim = registered.claim_webhooks
        self._http = http or httpx.AsyncClient(timeout=settings.webhook_timeout_s, follow_redirects=False)

    async def run_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.settings.webhook_poll_s)
                try:
                    await self.step()
                except TRANSIENT as exc:
                    self.outage.failed(exc, "webhook delivery")
                except Exception:
                    # A bug must not end deliveries for the life of the worker; the next poll tries again.
                    log.exception("webhook delivery poll failed")
        finally:
            for task in self.inflight:
                task.cancel()
            await asyncio.gather(*self.inflight, return_exceptions=True)
            await self._http.aclose()

    async def step(self) -> int:
        """Expands new outbox entries and starts the deliveries that are due, in every partition (one on one
        Redis: a turn's outbox entry is written by its commit, in its partition); returns how many it started."""
        started = 0
        for part in await self._with_work():
            started += await self._step(part)
        return started

    async def _with_work(self) -> list[str]:
        """The partitions with outbox entries or deliveries due, found by one pipelined read (one round trip
        per node on a cluster), so an idle poll costs no script runs however many partitions there are."""
        parts = keys.every_partition()
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in parts:
                pipe.exists(keys.webhook_outbox(part))
                pipe.zrangebyscore(keys.webhook_due(part), "-inf", _now_ms(), start=0, num=1)
            found = await pipe.execute()
        return [part for part, outbox, due in zip(parts, found[::2], found[1::2], strict=True) if outbox or due]

    async def _step(self, part: str) -> int:
        await self.expand(part)
        free = self.settings.webhook_max_concurrent - len(self.inflight)
        if free <= 0:
            return 0
        claimed = await self._claim(keys=[keys.webhook_due(part)], args=[_now_ms(), free, self.lease_ms])
        for raw in claimed:
            task = asyncio.create_task(self._deliver(part, text(raw)))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
        return len(claimed)

    async def expand(self, part: str = "") -> None:
        entries = await self.redis.lrange(keys.webhook_outbox(part), -_EXPAND_BATCH, -1)
        endpoints: dict[str, list[webhooks.Endpoint]] = {}
        for raw in reversed(entries):  # oldest (the list's tail) first
            entry = json.loads(raw)
            project = entry["project"]
            if project not in endpoints:
                endpoints[project] = await webhooks.list_endpoints(self.redis, project)
            args: list[Any] = [raw, _now_ms()]
            deliveries: list[str] = []
            for event in entry["events"]:
                body = json.dumps(event)
                for endpoint in endpoints[project]:
                    if event["type"] in endpoint.events:
                        delivery_id = f"{event['id']}:{endpoint.id}"
                        deliveries.append(keys.webhook_delivery(delivery_id, part))
                        args += [endpoint.id, project, event["id"], body, delivery_id]
            if not await self._expand(keys=[keys.webhook_outbox(part), keys.webhook_due(part), *deliveries], args=args):
                return  # another worker is expanding the same entries: leave the rest to it

    async def _deliver(self, part: str, delivery_id: str) -> None:
        try:
            await self._attempt(part, delivery_id)
        except TRANSIENT as exc:
            # The delivery stays claimed until its lease lapses, then any worker tries it again.
            self.outage.failed(exc, "webhook delivery")
        except Exception:
            log.exception("webhook delivery %s: unexpected error; retried when its lease lapses", delivery_id)

    async def _attempt(self, part: str, delivery_id: str) -> None:
        key = keys.webhook_delivery(delivery_id, part)
        record = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(key)).items()}
        if not record:
            await self.redis.zrem(keys.webhook_due(part), delivery_id)  # delivered by a worker whose lease lapsed
            return
        endpoint = await webhooks.get_endpoint(self.redis, record["project"], record["endpoint"])
        if endpoint is None:
            metrics.WEBHOOK_ATTEMPTS.labels("dropped").inc()
            await self._forget(part, delivery_id)
            return
        error = await self._post(endpoint, record["webhook_id"], record["body"])
        attempts = int(record["attempts"]) + 1
        if error is None:
            metrics.WEBHOOK_ATTEMPTS.labels("delivered").inc()
            await self._forget(part, delivery_id)
        elif attempts > len(self.delays_s):
            metrics.WEBHOOK_ATTEMPTS.labels("dead").inc()
            log.warning("webhook %s to %s: giving up after %d attempts: %s", delivery_id, endpoint.url, attempts, error)
            await self._bury(part, delivery_id, record, attempts, error)
        else:
            metrics.WEBHOOK_ATTEMPTS.labels("failed").inc()
            # Up to 10% of jitter, so endpoints that failed together are not all retried in the same instant.
            delay = self.delays_s[attempts - 1] * random.uniform(1.0, 1.1)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"attempts": attempts, "last_error": error})
                pipe.zadd(keys.webhook_due(part), {delivery_id: _now_ms() + int(delay * 1000)})
                await pipe.execute()

    async def _post(self, endpoint: webhooks.Endpoint, webhook_id: str, body: str) -> str | None:
        """One signed attempt; the error that makes it a failure, or None when the receiver took it (2xx)."""
        headers = {
            "content-type": "application/json",
            "user-agent": "turnstream-webhooks",
            **webhooks.sign(endpoint.secret, webhook_id, int(time.time()), body),
        }
        try:
            response = await self._http.post(endpoint.url, content=body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        return None if response.is_success else f"HTTP {response.status_code}"

    async def _forget(self, part: str, delivery_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.webhook_delivery(delivery_id, part))
            pipe.zrem(keys.webhook_due(part), delivery_id)
            await pipe.execute()

    async def _bury(self, part: str, delivery_id: str, record: dict[str, str], attempts: int, error: str) -> None:
        dead = {**record, "delivery_id": delivery_id, "attempts": attempts, "last_error": error,
                "failed_at": int(time.time())}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.WEBHOOK_DEAD, json.dumps(dead))
            pipe.ltrim(keys.WEBHOOK_DEAD, 0, self.settings.webhook_dead_letter_max - 1)
            pipe.delete(keys.webhook_delivery(delivery_id, part))
            pipe.zrem(keys.webhook_due(part), delivery_id)
            await pipe.execute()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
