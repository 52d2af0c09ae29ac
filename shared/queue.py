"""The job queue contract between the API (which enqueues) and the worker (which runs).

A turn's job is arq's own: its record (`arq:job:<id>`, serialised by arq's `serialize_job`) and its entry
in the queue's sorted set, so arq's worker runs it unchanged. Only the enqueue differs: arq's
`enqueue_job` spends three round trips (WATCH, EXISTS, MULTI/EXEC) and waking a worker a fourth; one
script does the same check-and-write and the wake in one.
"""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from shared import keys

RUN_TURN = "run_turn"  # the arq function name; one job per turn, job id = response id

# Wake tokens beyond this are pointless: each wakes one idle worker for one poll.
_MAX_WAKE_TOKENS = 64

# KEYS: job record, job result, queue, wake list. ARGV: job bytes, job ttl ms, score, job id, max wake tokens.
# Returns 1 when enqueued, 0 when the job (or its result) already exists, as arq's enqueue_job refuses then.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, ARGV[5] - 1)
return 1
"""


async def enqueue_turn(redis: ArqRedis, queue_name: str, response_id: str) -> bool:
    """Enqueues the turn's job (False if it already exists) and wakes one idle worker for it."""
    now = timestamp_ms()
    job = serialize_job(RUN_TURN, (response_id,), {}, None, now, serializer=redis.job_serializer)
    script = redis.register_script(_ENQUEUE)
    enqueued = await script(
        keys=[keys.arq_job(response_id), keys.arq_result(response_id), queue_name, keys.QUEUE_WAKE],
        args=[job, redis.expires_extra_ms, now, response_id, _MAX_WAKE_TOKENS],
    )
    return bool(enqueued)


async def queue_depth(redis: ArqRedis, queue_name: str) -> int:
    return int(await redis.zcard(queue_name))
