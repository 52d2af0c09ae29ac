"""The FastAPI application: routes, error handlers, and the clients its lifespan creates.

`api.app:app` is the same application built from the environment's settings, for ASGI servers that import
it (`uvicorn api.app:app`, `gunicorn -k uvicorn.workers.UvicornWorker api.app:app`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.deps import Services
from api.fanout import Fanout
from api.routes import conversations, responses, system
from shared.logs import LogContextMiddleware, configure_logging
from shared.redis_conn import EmbeddedRedis, connect
from shared.settings import Settings, get_settings
from shared.turn_state import Retention, TurnState


def create_app(settings: Settings, embedded: EmbeddedRedis | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    app.add_middleware(LogContextMiddleware)
    errors.install(app)
    app.include_router(responses.router)
    app.include_router(conversations.router)
    app.include_router(system.router)
    return app


def __getattr__(name: str) -> FastAPI:
    # Built on first access, not at import: importing the module must not need the environment's settings.
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    settings = get_settings()
    if settings.redis_url is None:
        raise RuntimeError("api.app:app needs TURNSTREAM_REDIS_URL; `turnstream dev` runs on an embedded Redis")
    configure_logging(settings.log_format)
    app = create_app(settings)
    globals()["app"] = app
    return app
