"""The API's services for tests that call its functions directly (accept, cancel) on a Redis of their own."""

from __future__ import annotations

from redis.asyncio import Redis

from api.agent_directory import AgentDirectory
from api.deps import Services
from shared.rate_limits import Limiter
from shared.settings import Settings
from shared.turn_accept import TurnAcceptor
from shared.turn_state import Retention, TurnState


def services(redis: Redis, settings: Settings) -> Services:
    retention = Retention.from_settings(settings)
    return Services(
        settings=settings,
        redis=redis,
        state=TurnState(redis, retention),
        acceptor=TurnAcceptor(redis, retention, settings.queue_name, settings.max_queue_depth),
        agents=AgentDirectory(redis, passthrough=True),
        fanout=None,  # type: ignore[arg-type]  # accept never streams, so it needs no fan-out
        limiter=Limiter(redis),
    )
