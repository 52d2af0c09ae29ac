"""A turn's job is written in arq's own format, once, with a wake token for an idle worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from arq.connections import ArqRedis
from arq.jobs import deserialize_job
from redis.exceptions import ConnectionError

from shared import ids, keys, partitions
from shared.queue import RUN_TURN, WakeTokens, enqueue_turn
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


@pytest.fixture
def cluster() -> Iterator[None]:
    """Key names and ids as a process on a cluster of 16 partitions makes them."""
    partitions.configure(16)
    yield
    partitions.configure(None)


class CountingPushes:
    """Counts the LPUSH commands sent; fails them while `down`."""

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis
        self.pushes = 0
        self.down = False

    async def lpush(self, key: str, *values: str) -> int:
        self.pushes += 1
        if self.down:
            raise ConnectionError("Redis is away")
        return await self.redis.lpush(key, *values)  # type: ignore[no-any-return]

    async def ltrim(self, key: str, start: int, end: int) -> bool:
        return await self.redis.ltrim(key, start, end)  # type: ignore[no-any-return]


async def test_on_a_cluster_the_accepts_of_a_burst_push_their_wake_tokens_together(cluster: None) -> None:
    r = CountingPushes(redis())
    tokens = WakeTokens(r)  # type: ignore[arg-type]
    turns = [ids.response_id(partitions.for_new()) for _ in range(20)]

    tokens.after_enqueue(turns[0])
    await asyncio.sleep(0)  # the first push is on its way: the rest wait for it, and then go in one
    for rid in turns[1:]:
        tokens.after_enqueue(rid)
    await tokens.flush()

    assert r.pushes == 2
    assert sorted(await r.redis.lrange(keys.QUEUE_WAKE, 0, -1)) == sorted(
        partitions.digits_of(rid).encode() for rid in turns
    )


async def test_a_wake_token_that_cannot_be_pushed_is_logged_not_raised(
    cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    r = CountingPushes(redis())
    r.down = True
    tokens = WakeTokens(r)  # type: ignore[arg-type]

    tokens.after_enqueue(ids.response_id(partitions.for_new()))
    await tokens.flush()

    assert r.pushes == 1
    assert "fallback poll" in caplog.text


async def test_on_one_redis_the_accept_script_wakes_the_worker_and_no_token_is_pushed_after() -> None:
    r = CountingPushes(redis())
    tokens = WakeTokens(r)  # type: ignore[arg-type]

    tokens.after_enqueue("resp_1")
    await tokens.flush()

    assert r.pushes == 0
