"""Models, liveness and readiness."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ServicesDep
from api.errors import not_found, store_unavailable
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
async def readyz(svc: ServicesDep) -> JSONResponse:
    """Redis is reachable: this node can take turns."""
    try:
        await svc.redis.ping()
    except Exception as exc:
        log.warning("not ready: redis unreachable: %s", exc)
        raise store_unavailable() from None
    return JSONResponse({"status": "ok"})
