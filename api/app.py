"""The FastAPI application: routes, error handlers, and the clients its lifespan creates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from api import errors
from api.deps import Services
from api.fanout import Fanout
from api.routes import conversations, metrics, responses, system
from shared import tracing
from shared.redis_conn import EmbeddedRedis, connect
from shared.settings import Settings
from shared.turn_state import Retention, TurnState

# FastAPI's own OpenTelemetry support makes the HTTP request spans (continuing a caller's `traceparent`)
# once shared/tracing.py has set the tracer provider. Its per-step spans would only sit between the request
# and the turn's `invoke_agent`; probes and scrapes would be most of the traces and say nothing; metrics
# are Prometheus' (shared/metrics.py).
TELEMETRY: TelemetryConfig = {
    "operation_spans": False,
    "metrics": False,
    "logs": False,
    "exclude": lambda scope: scope.get("path") in ("/metrics", "/healthz", "/readyz"),
}


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

    app = FastAPI(title="turnstream", version="0.1.0", lifespan=lifespan, telemetry=TELEMETRY)
    errors.install(app)
    app.include_router(responses.router)
    app.include_router(conversations.router)
    app.include_router(system.router)
    app.include_router(metrics.router)
    return app
