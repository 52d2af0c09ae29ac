"""Builds the arq worker: the turn job, its shared clients, and the fast-pickup loop."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Retry, func
from openai import AsyncOpenAI

from shared import keys, metrics, tracing
from shared.logs import log_context
from shared.lua import Durability
from shared.queue import RUN_TURN
from shared.redis_conn import connect
from shared.settings import Settings
from shared.turn_state import Retention, TurnState
from worker.agents import AgentRegistry, load_agents
from worker.arq_worker import FastPickupWorker, not_a_try
from worker.cancel_listener import CancelListener
from worker.heartbeat import Heartbeat
from worker.redis_retry import TRANSIENT, Outage
from worker.sweeper import Sweeper
from worker.turn import Deferred, TurnRunner
from worker.upstream_diagnostics import check_upstream_models
from worker.upstreams import make_client
from worker.webhook_delivery import WebhookDelivery

log = logging.getLogger(__name__)

# arq's own job timeout only backs up the turn deadline: a turn may also wait for its conversation.
_JOB_TIMEOUT_S = 24 * 3600


async def run_turn(ctx: dict[str, Any], response_id: str, conversation_id: str | None = None) -> str:
    """One turn's job. `conversation_id` is '' for a turn on its own; None only in a job enqueued by an older
    API node, whose record then tells."""
    runner: TurnRunner = ctx["runner"]
    job_id: str = ctx["job_id"]
    token, _ = ctx["claims"].get(job_id, (None, 0))
    with log_context(response_id=response_id):
        try:
            result = await runner.run(response_id, conversation_id, job_id, token)
        except TRANSIENT as exc:
            # arq deletes a job whose function raised; a Redis outage is not the turn's failure, so the job
            # goes back on the queue instead and the re-run continues from what was streamed.
            raise Retry(defer=1) from exc
        except Deferred as wait:
            # Back on the queue, due when the upstream's wait ends.
            await not_a_try(runner.redis, job_id)
            raise Retry(defer=wait.delay_s) from wait
        log.info("turn ended: %s", result)
        return result


async def publish_agents(redis: ArqRedis, agents: AgentRegistry) -> None:
    """Any API node can then list and validate models without importing worker code."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.AGENTS)
        pipe.hset(keys.AGENTS, mapping={a.name: json.dumps(a.card()) for a in agents})
        await pipe.execute()


def upstream_client(settings: Settings) -> AsyncOpenAI:
    """The openai SDK client every turn of this process calls its upstream with (one connection pool)."""
    return make_client(settings, settings.upstream_base_url, settings.openai_api_key.get_secret_value())


def build_worker(
    settings: Settings, redis: ArqRedis | None = None, *, handle_signals: bool = True
) -> FastPickupWorker:
    agents = load_agents(settings.agents)
    outage = Outage(settings.redis_retry_max_s)

    async def startup(ctx: dict[str, Any]) -> None:
        pool: ArqRedis = ctx["redis"]
        tracing.configure(settings, "turnstream-worker")
        if settings.worker_metrics_port:
            ctx["metrics"] = metrics.serve(settings.host, settings.worker_metrics_port)
        heartbeat = Heartbeat(pool, settings, lambda: worker.job_counter, outage)
        await heartbeat.first()
        ctx["heartbeat"] = heartbeat
        ctx["heartbeat_task"] = asyncio.create_task(heartbeat.run_forever())
        await outage.call(lambda: publish_agents(pool, agents), "agent publish")
        cancels = CancelListener(pool, outage, settings.queue_name)
        await cancels.start()
        client = upstream_client(settings)
        state = TurnState(pool, Retention.from_settings(settings), Durability.from_settings(settings))
        ctx["cancels"] = cancels
        ctx["client"] = client
        ctx["runner"] = TurnRunner(pool, settings, agents, client, cancels, outage, ctx["claims"])
        ctx["sweeper"] = asyncio.create_task(Sweeper(pool, settings, state, outage).run_forever())
        ctx["webhooks"] = asyncio.create_task(WebhookDelivery(pool, settings, outage).run_forever())
        if settings.openai_base_url is not None:  # the built-in mock answers any model name
            ctx["upstream_check"] = asyncio.create_task(check_upstream_models(client, agents))
        log.info("worker ready: agents %s, upstream %s", ", ".join(a.name for a in agents), settings.upstream_base_url)

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "upstream_check" in ctx:
            ctx["upstream_check"].cancel()
        if "metrics" in ctx:
            await asyncio.to_thread(ctx["metrics"].shutdown)  # waits for the server's poll loop to end
        if "heartbeat" in ctx:
            ctx["heartbeat_task"].cancel()
            await asyncio.gather(ctx["heartbeat_task"], return_exceptions=True)
            await ctx["heartbeat"].leave()
        if "cancels" in ctx:
            ctx["sweeper"].cancel()
            ctx["webhooks"].cancel()
            await asyncio.gather(ctx["webhooks"], return_exceptions=True)
            await ctx["cancels"].stop()
            await ctx["client"].close()
            await ctx["runner"].upstreams.close()

    worker = FastPickupWorker(
        functions=[func(run_turn, name=RUN_TURN, max_tries=settings.job_max_tries + 1, timeout=_JOB_TIMEOUT_S)],
        queue_name=settings.queue_name,
        redis_pool=redis,
        connect=lambda: connect(settings),
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=settings.max_jobs,
        fallback_poll_s=settings.poll_delay_s,
        lease_s=settings.lease_s,
        outage=outage,
        health_check_interval=30,  # `turnstream worker --check` fails once this lapses
        health_check_key=keys.worker_health(settings.queue_name, socket.gethostname()),
        handle_signals=handle_signals,
        # Lets a SIGTERM'd worker finish short turns instead of re-queueing them (under k8s' 60 s grace).
        job_completion_wait=settings.shutdown_grace_s,
    )
    return worker
