"""The FastAPI application: routes, error handlers, and the clients its lifespan creates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.deps import Services
from api.fanout import Fanout
from api.request_spans import RequestSpans
from api.routes import conversations, metrics, responses, system
from shared import tracing
from shared.redis_conn import EmbeddedRedis, connect
from shared.settings import Settings
from shared.turn_state import Retention, TurnState


def create_app(settings: Settings, embedded: EmbeddedRedis | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.configure(settings, "turnstream-api")
        redis = await connect(settings, embedded)
        reader = await connect(settings, embedded)
        fanout = Fanout(redis, reader)
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

    app = FastAPI(title="turnstream", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.include_router(responses.router)
    app.include_router(conversations.router)
    app.include_router(system.router)
    app.include_router(metrics.router)
    app.add_middleware(RequestSpans)
    return app
