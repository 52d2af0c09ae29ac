"""The job queue contract between the API (which enqueues) and the worker (which runs)."""

from __future__ import annotations

from arq.connections import ArqRedis

from shared import keys

RUN_TURN = "run_turn"  # the arq function name; one job per turn, job id = response id

# Wake tokens beyond this are pointless: each wakes one idle worker for one poll.
_MAX_WAKE_TOKENS = 64


async def enqueue_turn(redis: ArqRedis, queue_name: str, response_id: str) -> bool:
    """Enqueues the turn and wakes one idle worker so pickup does not wait for the next poll."""
    job = await redis.enqueue_job(RUN_TURN, response_id, _job_id=response_id, _queue_name=queue_name)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(keys.QUEUE_WAKE, "1")
        pipe.ltrim(keys.QUEUE_WAKE, 0, _MAX_WAKE_TOKENS - 1)
        await pipe.execute()
    return job is not None


async def queue_depth(redis: ArqRedis, queue_name: str) -> int:
    return int(await redis.zcard(queue_name))
