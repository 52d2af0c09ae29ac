"""Redis clients: a real server from a URL, or the embedded in-process fakeredis of the dev mode."""

from __future__ import annotations

import fakeredis
from arq.connections import ArqRedis, RedisSettings
from fakeredis.aioredis import FakeAsyncRedisMixin
from redis.asyncio import ConnectionPool

from shared.settings import Settings


class _FakeArqRedis(FakeAsyncRedisMixin, ArqRedis):
    """arq's client class on fakeredis' connection class: arq needs ArqRedis, fakeredis supplies the server."""


class EmbeddedRedis:
    """One in-process fakeredis server; every client made from it sees the same data."""

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer()

    def client(self, settings: Settings) -> ArqRedis:
        return _FakeArqRedis(server=self.server, default_queue_name=settings.queue_name)


async def connect(settings: Settings, embedded: EmbeddedRedis | None = None) -> ArqRedis:
    if settings.redis_url is None:
        if embedded is None:
            raise RuntimeError(
                "TURNSTREAM_REDIS_URL is not set; only `turnstream dev` can run on the embedded Redis"
            )
        return embedded.client(settings)
    # No ping here: an API node starts while Redis is away, answers 503 meanwhile, and recovers by itself.
    pool = ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=2, health_check_interval=30)
    return ArqRedis(pool, default_queue_name=settings.queue_name)


def text(value: bytes | str) -> str:
    """A reply value as text: clients made without decode_responses answer bytes, fakeredis' Lua sometimes str."""
    return value.decode() if isinstance(value, bytes) else value


def redis_settings(settings: Settings) -> RedisSettings:
    assert settings.redis_url is not None
    redis = RedisSettings.from_dsn(settings.redis_url)
    # arq's own connect retries log a countdown ("5 retries remaining...") that starts over on every attempt;
    # the worker retries a connect itself (worker/redis_retry.py), logging once per outage.
    redis.conn_retries = 0
    return redis
