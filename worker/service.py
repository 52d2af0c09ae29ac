"""Builds the arq worker: the turn job, its shared clients, and the fast-pickup loop."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from arq.connections import ArqRedis
from arq.worker import func
from openai import AsyncOpenAI

from shared import keys
from shared.logs import log_context
from shared.queue import RUN_TURN
from shared.redis_conn import redis_settings
from shared.settings import Settings
from worker.agents import AgentRegistry, load_agents
from worker.cancel_listener import CancelListener
from worker.fast_pickup import FastPickupWorker
from worker.turn import TurnRunner
from worker.upstream_diagnostics import check_upstream_models

log = logging.getLogger(__name__)

# arq's own job timeout only backs up the turn deadline: a turn may also wait for its conversation.
_JOB_TIMEOUT_S = 24 * 3600


async def run_turn(ctx: dict[str, Any], response_id: str) -> str:
    runner: TurnRunner = ctx["runner"]
    with log_context(response_id=response_id):
        result = await runner.run(response_id)
        log.info("turn ended: %s", result)
        return result


async def publish_agents(redis: ArqRedis, agents: AgentRegistry) -> None:
    """Any API node can then list and validate models without importing worker code."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.AGENTS)
        pipe.hset(keys.AGENTS, mapping={a.name: json.dumps(a.card()) for a in agents})
        await pipe.execute()


def build_worker(
    settings: Settings, redis: ArqRedis | None = None, *, burst: bool = False, handle_signals: bool = True
) -> FastPickupWorker:
    agents = load_agents(settings.agents)

    async def startup(ctx: dict[str, Any]) -> None:
        pool: ArqRedis = ctx["redis"]
        await publish_agents(pool, agents)
        cancels = CancelListener(pool)
        await cancels.start()
        client = AsyncOpenAI(
            base_url=settings.upstream_base_url,
            api_key=settings.openai_api_key.get_secret_value(),
            timeout=settings.upstream_timeout_s,
        )
        ctx["cancels"] = cancels
        ctx["client"] = client
        ctx["runner"] = TurnRunner(pool, settings, agents, client, cancels)
        if settings.openai_base_url is not None:  # the built-in mock answers any model name
            ctx["upstream_check"] = asyncio.create_task(check_upstream_models(client, agents))
        log.info("worker ready: agents %s, upstream %s", ", ".join(a.name for a in agents), settings.upstream_base_url)

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "upstream_check" in ctx:
            ctx["upstream_check"].cancel()
        if "cancels" in ctx:
            await ctx["cancels"].stop()
            await ctx["client"].close()

    return FastPickupWorker(
        functions=[func(run_turn, name=RUN_TURN, max_tries=settings.job_max_tries + 1, timeout=_JOB_TIMEOUT_S)],
        queue_name=settings.queue_name,
        redis_pool=redis,
        redis_settings=None if redis is not None else redis_settings(settings),
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=settings.max_jobs,
        fallback_poll_s=settings.poll_delay_s,
        health_check_interval=30,  # `turnstream worker --check` fails once this lapses
        health_check_key=keys.worker_health(settings.queue_name, socket.gethostname()),
        keep_result=60,  # nothing reads arq's job results; turn results live in the response hash
        burst=burst,
        handle_signals=handle_signals,
        # Lets a SIGTERM'd worker finish short turns instead of re-queueing them (under k8s' 60 s grace).
        job_completion_wait=45,
    )
