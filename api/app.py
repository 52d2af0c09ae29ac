"""The FastAPI application: routes, error handlers, and the clients its lifespan creates.

`api.app:app` is the same application built from the environment's settings, for ASGI servers that import
it (`uvicorn api.app:app`, `gunicorn -k uvicorn.workers.UvicornWorker api.app:app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.types import ASGIApp

from api import errors
from api.agent_directory import AgentDirectory
from api.auth import RequestBudgetHeaders, authenticate
from api.deps import Services
from api.disconnect import DisconnectCancels
from api.fanout import Fanout
from api.live_workers import LiveWorkers
from api.routes import agui, compact, conversations, metrics, playground, responses, system, websocket
from api.sse import ExposeConnection
from shared import tracing
from shared.api_keys import KeyStore, SeedKey, seed_from_settings
from shared.logs import LogContextMiddleware, configure_logging
from shared.lua import Durability
from shared.rate_limits import Limiter
from shared.redis_conn import UNAVAILABLE, EmbeddedRedis, connect
from shared.settings import Settings, get_settings
from shared.turn_accept import TurnAcceptor
from shared.turn_state import Retention, TurnState

log = logging.getLogger(__name__)

# FastAPI's own OpenTelemetry support makes the HTTP request spans (continuing a caller's `traceparent`)
# once shared/tracing.py has set the tracer provider. Its per-step spans would only sit between the request
# and the turn's `invoke_agent`; probes and scrapes would be most of the traces and say nothing; metrics
# are Prometheus' (shared/metrics.py).
TELEMETRY: TelemetryConfig = {
    "operation_spans": False,
    "metrics": False,
    "logs": False,
    # The playground's page and files are static: a span per file load would say nothing either.
    "exclude": lambda scope: scope.get("path") in ("/metrics", "/healthz", "/readyz", "/")
    or str(scope.get("path", "")).startswith(f"{playground.ASSETS_PATH}/"),
}


class _App(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Outside every middleware, where the server's own `send` is still visible (see api/sse.py).
        return ExposeConnection(super().build_middleware_stack())


def create_app(settings: Settings, embedded: EmbeddedRedis | None = None) -> FastAPI:
    """The API; it checks keys unless TURNSTREAM_AUTH is off (`turnstream dev` turns it off when unset)."""
    auth = settings.auth is not False
    seeds = seed_from_settings(settings)  # a malformed seed list stops the node here, not at first use

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.configure(settings, "turnstream-api")
        redis = await connect(settings, embedded, away_is_one_redis=True)
        reader = await connect(settings, embedded, away_is_one_redis=True)
        fanout = Fanout(
            redis,
            reader,
            keepalive_s=settings.sse_keepalive_s,
            stall_timeout_s=settings.sse_stall_timeout_s,
            max_streams=settings.max_sse_streams,
        )
        await fanout.start()
        app.state.services = Services(
            settings=settings,
            redis=redis,
            state=TurnState(redis, Retention.from_settings(settings), Durability.from_settings(settings)),
            acceptor=TurnAcceptor(
                redis,
                Retention.from_settings(settings),
                settings.queue_name,
                settings.max_queue_depth,
                Durability.from_settings(settings),
            ),
            agents=AgentDirectory(redis, passthrough=settings.allow_model_passthrough),
            fanout=fanout,
            limiter=Limiter(redis) if auth else None,
            workers=(
                LiveWorkers(redis, settings.queue_name, settings.live_worker_cache_s)
                if settings.require_live_worker
                else None
            ),
        )
        disconnects = app.state.services.disconnects = DisconnectCancels(app.state.services)
        seeding = asyncio.create_task(_seed(KeyStore(redis, settings), seeds)) if seeds is not None else None
        try:
            yield
        finally:
            try:
                if seeding is not None:
                    seeding.cancel()
                    with contextlib.suppress(BaseException):
                        await seeding
                await disconnects.stop()
                await fanout.stop()
                with contextlib.suppress(Exception):  # tokens not pushed cost a fallback poll's delay, no turn
                    await app.state.services.acceptor.wake_tokens.flush()
            finally:
                await reader.aclose()
                await redis.aclose()

    # Every route needs a key but the probes (api/auth.py OPEN_ROUTES); routes that need the caller's
    # project take it as a parameter, which FastAPI resolves from this same call.
    app = _App(
        title="turnstream",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=TELEMETRY,
        dependencies=[Depends(authenticate)],
    )
    app.add_middleware(RequestBudgetHeaders)
    app.add_middleware(LogContextMiddleware)
    errors.install(app)
    app.include_router(compact.router)
    app.include_router(responses.router)
    app.include_router(conversations.router)
    app.include_router(system.router)
    app.include_router(websocket.router)
    app.include_router(agui.router)
    app.include_router(metrics.router)
    app.include_router(playground.router)
    app.mount(playground.ASSETS_PATH, playground.assets(), name="playground")
    return app


async def _seed(store: KeyStore, seeds: Sequence[SeedKey]) -> None:
    """Applies the seeded keys; retried while Redis is away, since a node may start before it."""
    failed = False
    while True:
        try:
            await store.seed(seeds)
        except UNAVAILABLE as exc:
            if not failed:  # one line per outage, not one a second
                log.warning("seeding API keys failed (%s); retrying every second", exc)
            failed = True
            await asyncio.sleep(1)
        else:
            log.info("seeded %d API keys", len(seeds))
            return


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
