"""Which workers are alive: each worker's heartbeat, read by `/readyz` and `turnstream status`.

A worker writes its record (`keys.worker(id)`) with a TTL every TURNSTREAM_WORKER_HEARTBEAT_S and adds its id
to `keys.WORKERS`; Redis expires the record of a worker that stopped beating, on Redis' own clock, so no
reader compares clocks. Readers take the ids from the set, read the records in one pipeline and drop the
ids whose record has gone. A worker that stops cleanly removes itself at once.

This is separate from arq's health-check key (`keys.worker_health`): that one is per host, for
`turnstream worker --check` inside the worker's own pod, and refreshed every 30 s.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel
from redis.asyncio import Redis

from shared import keys


class WorkerBeat(BaseModel):
    id: str
    host: str
    pid: int
    queue: str
    running: int  # turns this worker is running now
    max_jobs: int
    started_at: float  # unix seconds
    beat_at: float  # unix seconds, the worker's clock


async def beat(redis: Redis, record: WorkerBeat, ttl_s: int) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.worker(record.id), record.model_dump_json(), ex=ttl_s)
        pipe.zadd(keys.WORKERS, {record.id: int(record.beat_at * 1000)})
        await pipe.execute()


async def leave(redis: Redis, worker_id: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(keys.worker(worker_id))
        pipe.zrem(keys.WORKERS, worker_id)
        await pipe.execute()


async def live_workers(redis: Redis, queue: str | None = None) -> list[WorkerBeat]:
    """Workers whose heartbeat has not expired, oldest first; with `queue`, only the workers of that queue."""
    ids: Sequence[bytes] = await redis.zrange(keys.WORKERS, 0, -1)
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.get(keys.worker(worker_id.decode()))
        records = await pipe.execute()
    gone = [worker_id for worker_id, raw in zip(ids, records, strict=True) if raw is None]
    if gone:
        await redis.zrem(keys.WORKERS, *gone)
    alive = [WorkerBeat.model_validate_json(raw) for raw in records if raw is not None]
    if queue is not None:
        alive = [w for w in alive if w.queue == queue]
    return sorted(alive, key=lambda w: w.started_at)
