"""A turn's job is written in arq's own format, once, with a wake token for an idle worker."""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.jobs import deserialize_job

from shared import keys
from shared.queue import RUN_TURN, enqueue_turn
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings

SETTINGS = Settings()


def redis() -> ArqRedis:
    return EmbeddedRedis().client(SETTINGS)


async def test_the_job_is_arqs_own_and_a_worker_is_woken() -> None:
    r = redis()

    assert await enqueue_turn(r, SETTINGS.queue_name, "resp_1", None) is True

    job = deserialize_job(await r.get(keys.arq_job("resp_1")))
    assert (job.function, job.args, job.kwargs) == (RUN_TURN, ("resp_1", ""), {})
    assert await r.zscore(SETTINGS.queue_name, "resp_1") == job.enqueue_time.timestamp() * 1000
    assert 0 < await r.pttl(keys.arq_job("resp_1")) <= r.expires_extra_ms
    assert await r.lrange(keys.QUEUE_WAKE, 0, -1) == [b"1"]
    assert await r.zcard(SETTINGS.queue_name) == 1


async def test_a_job_that_exists_or_left_a_result_is_not_enqueued_again() -> None:
    r = redis()
    assert await enqueue_turn(r, SETTINGS.queue_name, "resp_1", None)
    await r.set(keys.arq_result("resp_2"), b"done")

    assert await enqueue_turn(r, SETTINGS.queue_name, "resp_1", None) is False
    assert await enqueue_turn(r, SETTINGS.queue_name, "resp_2", None) is False
    assert await r.zcard(SETTINGS.queue_name) == 1


async def test_wake_tokens_are_capped() -> None:
    r = redis()
    for i in range(100):
        await enqueue_turn(r, SETTINGS.queue_name, f"resp_{i}", None)

    assert await r.llen(keys.QUEUE_WAKE) == 64
