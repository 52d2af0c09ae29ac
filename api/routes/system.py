"""Models, liveness and readiness."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api.deps import ServicesDep
from api.errors import no_live_workers, not_found, store_unavailable
from shared import fleet
from shared.models import AgentCard

log = logging.getLogger(__name__)

router = APIRouter(tags=["system"])


async def _cards(svc: ServicesDep) -> list[AgentCard]:
    cards = list((await svc.agents.cards()).values())
    return cards or [AgentCard(name=svc.settings.default_model, model=svc.settings.default_model)]


def _model(card: AgentCard) -> dict[str, Any]:
    return {"id": card.name, "object": "model", "created": 0, "owned_by": "turnstream"}


@router.get("/v1/models")
async def list_models(svc: ServicesDep) -> dict[str, Any]:
    """List the agent profiles the workers serve, as models."""
    return {"object": "list", "data": [_model(c) for c in sorted(await _cards(svc), key=lambda c: c.name)]}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, svc: ServicesDep) -> dict[str, Any]:
    """Retrieve one model."""
    for card in await _cards(svc):
        if card.name == model_id:
            return _model(card)
    raise not_found("Model", model_id)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(
    svc: ServicesDep,
    exclude: Annotated[list[Literal["workers"]], Query(description="checks to leave out")] = [],  # noqa: B006
) -> JSONResponse:
    """Ready to run turns: Redis is reachable and at least one worker of this API's queue is alive.

    `?exclude=workers` (as Kubernetes' own /readyz takes `exclude=`) asks only whether this API node can serve:
    the API Deployment's readiness probe uses it, so that with every worker down the API nodes stay behind
    the load balancer, serving reads, streams and this clear 503, instead of all leaving it.
    Worker ids and hosts are left to `turnstream status`: this route needs no key.
    """
    try:
        await svc.redis.ping()
        workers = [] if "workers" in exclude else await fleet.live_workers(svc.redis, svc.settings.queue_name)
    except Exception as exc:
        log.warning("not ready: redis unreachable: %s", exc)
        raise store_unavailable() from None
    if "workers" in exclude:
        return JSONResponse({"status": "ok"})
    if not workers:
        raise no_live_workers(svc.settings.queue_name, svc.settings.worker_heartbeat_ttl_s)
    return JSONResponse(
        {"status": "ok", "workers": {"live": len(workers), "running_turns": sum(w.running for w in workers)}}
    )
