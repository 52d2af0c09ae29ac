"""The FastAPI application: routes, error handlers, and the clients its lifespan creates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from api import errors
from api.deps import Services
from api.fanout import Fanout
from api.routes import conversations, responses, system
from api.sse import ExposeConnection
from shared.redis_conn import EmbeddedRedis, connect
from shared.settings import Settings
from shared.turn_state import Retention, TurnState


class _App(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Outside every middleware, where the server's own `send` is still visible (see api/sse.py).
        return ExposeConnection(super().build_middleware_stack())


def create_app(settings: Settings, embedded: EmbeddedRedis | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = await connect(settings, embedded)
        reader = await connect(settings, embedded)
        fanout = Fanout(
            redis,
            reader,
            keepalive_s=settings.sse_keepalive_s,
            stall_timeout_s=settings.sse_stall_timeout_s,
            max_streams=settings.max_sse_streams,
        )
        await fanout.start()
        app.state.services = Services(
            settings=settings, redis=redis, state=TurnState(redis, Retention.from_settings(settings)), fanout=fanout
        )
        try:
            yield
        finally:
            try:
                await fanout.stop()
            finally:
                await reader.aclose()
                await redis.aclose()

    app = _App(title="turnstream", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.include_router(responses.router)
    app.include_router(conversations.router)
    app.include_router(system.router)
    return app
