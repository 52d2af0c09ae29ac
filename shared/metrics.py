"""Prometheus metrics: everything the API and the workers export, and the hooks that move them.

Each process counts what it does itself (the API: accepts, SSE streams, fan-out; a worker: pickups, model
calls, tools, tokens; either: commits, Redis errors) in prometheus_client's default registry. The API
serves it at /metrics, a worker on TURNSTREAM_WORKER_METRICS_PORT; `turnstream dev` runs both in one
process, so its /metrics has everything. Prometheus sums across processes (`sum by (...)`).

Queue figures are read from Redis when the API is scraped (`QueueStats`), so they are the same on every
API replica: aggregate them with `max`, not `sum`.

Names follow Prometheus conventions (base units, `_total`, `_seconds`) and, where one exists, the
OpenTelemetry GenAI semantic conventions, dots turned to underscores: gen_ai.server.time_to_first_token
becomes `gen_ai_server_time_to_first_token_seconds`. On those, `gen_ai_request_model` is the model the
request named: the public model (agent) for the server-side figures, the upstream model for the
gen_ai_client_* ones (what the upstream was asked for, and bills). Labels are bound once per turn, never
looked up per chunk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from shared import keys

# A `_created` series per counter and histogram doubles the series count for a start time nobody charts.
disable_created_metrics()

# The buckets the GenAI semantic conventions advise, with finer ones below them for fast local models.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 300.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- turns -------------------------------------------------------------------------------------

TURNS_ACCEPTED = Counter("turnstream_turns_accepted", "Turns the API accepted.", ["model", "project"])
TURNS_FINISHED = Counter(
    "turnstream_turns_finished", "Turns committed in a terminal state.", ["status", "model", "project"]
)
TURN_RERUNS = Counter(
    "turnstream_turn_reruns",
    "Attempts after the first (the previous worker died or was stopped).",
    ["model", "project"],
)
QUEUE_WAIT = Histogram(
    "turnstream_queue_wait_seconds", "From enqueue (or re-queue) to a worker claiming the job.", buckets=_FAST_BUCKETS
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "From the API accepting a turn to its first output (text or tool call) being streamed.",
    ["gen_ai_request_model", "project"],
    buckets=_TTFT_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Per model call: time after the first chunk divided by the output tokens after the first.",
    ["gen_ai_request_model", "project"],
    buckets=_TPOT_BUCKETS,
)

# --- upstream model ----------------------------------------------------------------------------

TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per upstream model call, as the upstream reported them.",
    ["gen_ai_token_type", "gen_ai_request_model", "project"],
    buckets=_TOKEN_BUCKETS,
)
OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Upstream model calls, from request to the end of the stream.",
    ["gen_ai_request_model", "error_type"],
    buckets=_DURATION_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "turnstream_upstream_errors",
    "Upstream model calls that failed, by HTTP status or 'connection' / 'timeout' / 'stream'.",
    ["status"],
)

UPSTREAM_RETRIES = Counter(
    "turnstream_upstream_retries",
    "Waits before calling an upstream again, by upstream and what failed (HTTP status, connection, timeout, cut).",
    ["upstream", "reason"],
)
UPSTREAM_COOLDOWNS = Counter(
    "turnstream_upstream_cooldowns", "Times an upstream was put in cooldown for the whole fleet.", ["upstream"]
)
UPSTREAM_FALLBACKS = Counter(
    "turnstream_upstream_fallbacks",
    "Turns that moved on to a further upstream, by the upstream moved to.",
    ["upstream"],
)
UPSTREAM_SERVED = Counter(
    "turnstream_upstream_turns_served", "Turns whose last model call an upstream answered.", ["upstream"]
)

# --- tools ---------------------------------------------------------------------------------------

TOOL_CALLS = Counter("turnstream_tool_calls", "Server tool executions.", ["tool"])
TOOL_ERRORS = Counter("turnstream_tool_errors", "Server tool executions that returned an error result.", ["tool"])
TOOL_DURATION = Histogram(
    "turnstream_tool_duration_seconds", "Server tool execution time.", ["tool"], buckets=_DURATION_BUCKETS
)

# --- streaming to clients (API) ----------------------------------------------------------------

SSE_STREAMS = Gauge("turnstream_sse_streams_active", "SSE responses being streamed by this API process.")
FANOUT_LAG = Histogram(
    "turnstream_fanout_delivery_lag_seconds",
    "From the fan-out reading an event from Redis to handing it to the client's stream.",
    buckets=_FAST_BUCKETS,
)
SLOW_READER_DISCONNECTS = Counter(
    "turnstream_fanout_slow_reader_disconnects", "SSE clients disconnected for falling too far behind."
)

# --- Redis -----------------------------------------------------------------------------------------

REDIS_ERRORS = Counter("turnstream_redis_errors", "Redis calls that failed with a connection-level error.")
REDIS_RECONNECTS = Counter("turnstream_redis_reconnects", "Redis reachable again after an outage.")
REDIS_WAIT_SHORT = Counter(
    "turnstream_redis_wait_short",
    "Accepts and commits that fewer replicas than TURNSTREAM_REDIS_WAIT_REPLICAS acknowledged in time.",
)

# --- webhooks ------------------------------------------------------------------------------------

WEBHOOK_ATTEMPTS = Counter(
    "turnstream_webhook_attempts",
    "Webhook delivery attempts: delivered, failed (to be retried), dead (out of retries), dropped (endpoint gone).",
    ["outcome"],
)


# --- hooks for the fan-out and SSE ---------------------------------------------------------------


def sse_stream_opened() -> None:
    SSE_STREAMS.inc()


def sse_stream_closed() -> None:
    SSE_STREAMS.dec()


def fanout_delivered(read_at: float) -> None:
    """An event read from Redis at `read_at` (time.monotonic()) reached its client's stream."""
    FANOUT_LAG.observe(time.monotonic() - read_at)


def slow_reader_disconnected() -> None:
    SLOW_READER_DISCONNECTS.inc()


def turn_finished(status: str, model: str, project: str) -> None:
    TURNS_FINISHED.labels(status, model, project).inc()


# --- queue figures, read from Redis at scrape time -----------------------------------------------


class QueueStats(Collector):
    """The queue as Redis has it, read once per scrape in one round trip (ZCARDs, one ZRANGE, one LLEN)."""

    _HELP = {
        "turnstream_queue_depth": "Jobs waiting in the queue for a worker.",
        "turnstream_queue_running": "Jobs claimed by workers (leased, running).",
        "turnstream_queue_oldest_age_seconds": "How long the oldest due job has waited (0 when none).",
        "turnstream_turns_unfinished": "Accepted turns not yet committed (queued, waiting or running).",
        "turnstream_webhook_deliveries_pending": "Webhook deliveries waiting for their next attempt.",
        "turnstream_webhook_dead_letters": "Webhook deliveries that ran out of retries (kept, capped).",
    }

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    async def refresh(self, redis: Redis, queue_name: str) -> None:
        parts = keys.every_partition()  # [""] on one Redis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.llen(keys.WEBHOOK_DEAD)
            for part in parts:
                queue = keys.queue(queue_name, part)
                pipe.zcard(queue)
                pipe.zrange(queue, 0, 0, withscores=True)
                pipe.zcard(keys.running_jobs(queue))
                pipe.zcard(keys.active_turns(part))
                pipe.zcard(keys.webhook_due(part))
            dead, *figures = await pipe.execute()
        each = [figures[i :: 5] for i in range(5)]  # per figure, one value per partition
        depth, running, unfinished, webhooks = sum(each[0]), sum(each[2]), sum(each[3]), sum(each[4])
        # A job's score is when it is due (ms); a deferred job's lies ahead and has not waited yet.
        oldest = min((found[0][1] for found in each[1] if found), default=None)
        age = max(0.0, time.time() - oldest / 1000) if oldest is not None else 0.0
        self.values = {
            "turnstream_queue_depth": depth,
            "turnstream_queue_running": running,
            "turnstream_queue_oldest_age_seconds": age,
            "turnstream_turns_unfinished": unfinished,
            "turnstream_webhook_deliveries_pending": webhooks,
            "turnstream_webhook_dead_letters": dead,
        }

    def unavailable(self) -> None:
        """Redis could not be read: the figures are unknown, not zero."""
        self.values = dict.fromkeys(self._HELP, math.nan)

    def collect(self) -> Iterator[Any]:
        for name, value in self.values.items():
            yield GaugeMetricFamily(name, self._HELP[name], value=value)

    def describe(self) -> Iterator[Any]:
        return iter(())  # the registry must not call collect() (and find nothing) when this registers


QUEUE_STATS = QueueStats()
REGISTRY.register(QUEUE_STATS)


def serve(host: str, port: int) -> Any:
    """Serves this process's metrics on a background thread; returns the server (call .shutdown())."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=host)
    return server
