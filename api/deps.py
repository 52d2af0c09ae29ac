"""Shared clients, created once at startup and handed to routes as typed dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from arq.connections import ArqRedis
from fastapi import Depends
from starlette.requests import HTTPConnection

from api.agent_directory import AgentDirectory
from api.fanout import Fanout
from api.live_workers import LiveWorkers
from shared.rate_limits import Limiter
from shared.settings import Settings
from shared.turn_accept import TurnAcceptor
from shared.turn_state import TurnState

if TYPE_CHECKING:
    from api.disconnect import DisconnectCancels


@dataclass
class Services:
    settings: Settings
    redis: ArqRedis
    state: TurnState
    acceptor: TurnAcceptor
    agents: AgentDirectory
    fanout: Fanout
    limiter: Limiter | None = None  # None: the API checks no keys (TURNSTREAM_AUTH=off)
    disconnects: DisconnectCancels | None = None  # cancel-on-disconnect timers (set once the services exist)
    # None: creates are accepted whether or not a worker is alive (TURNSTREAM_REQUIRE_LIVE_WORKER=false)
    workers: LiveWorkers | None = None


async def _services(connection: HTTPConnection) -> Services:
    # Async on purpose: FastAPI runs a sync dependency in its thread pool, a hop on every request. And an
    # HTTPConnection, not a Request, so WebSocket routes get it too.
    services: Services = connection.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]
