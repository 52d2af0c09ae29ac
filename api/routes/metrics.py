"""Prometheus metrics of this API process, plus the queue as Redis has it at scrape time."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from api.deps import ServicesDep
from shared.metrics import QUEUE_STATS

log = logging.getLogger(__name__)

router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
async def metrics(svc: ServicesDep) -> Response:
    """Prometheus text exposition; unauthenticated, like /healthz: put it behind the network, not a key."""
    try:
        await QUEUE_STATS.refresh(svc.redis, svc.settings.queue_name)
    except Exception as exc:
        # Still answer: the process's own figures are worth having while Redis is away.
        log.warning("metrics: queue figures unavailable: %s", exc)
        QUEUE_STATS.unavailable()
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
