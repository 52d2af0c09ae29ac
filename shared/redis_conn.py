"""Redis clients: a real server from a URL, or the embedded in-process fakeredis of the dev mode."""

from __future__ import annotations

from typing import Any

import fakeredis
from arq.connections import ArqRedis, RedisSettings, create_pool
from fakeredis.aioredis import FakeAsyncRedisMixin

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
    return await create_pool(
        redis_settings(settings), default_queue_name=settings.queue_name, retry=0
    )


def redis_settings(settings: Settings) -> RedisSettings:
    assert settings.redis_url is not None
    rs = RedisSettings.from_dsn(settings.redis_url)
    # Fail fast: the API answers 503 instead of hanging when Redis is away.
    rs.conn_timeout = 2
    rs.conn_retries = 0
    return rs


def patch_arq_for_fakeredis() -> None:
    """arq logs INFO at worker start; fakeredis has no INFO command."""
    import arq.worker

    async def _no_info(redis: Any, log_func: Any) -> None:
        log_func("redis: embedded fakeredis")

    arq.worker.log_redis_info = _no_info
