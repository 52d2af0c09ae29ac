"""The one settings class. Nothing else in the project reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TURNSTREAM_", env_file=".env", extra="ignore")

    # --- Redis -------------------------------------------------------------------------------
    # Unset means the embedded in-process fakeredis, which only `turnstream dev` can use.
    redis_url: str | None = None
    queue_name: str = "turnstream:queue"
    # Replicas that must acknowledge a turn's accept and its commit before the service answers (Redis WAIT):
    # narrows the writes a failover can lose. 0 = answer once the primary has it (Redis' own default).
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_ms: int = Field(default=100, ge=1)  # then the answer goes out anyway, counted
    # Redis Cluster: unset = asked of the server (`cluster_enabled` in INFO); true/false forces it.
    redis_cluster: bool | None = None
    # Partitions of the keys on a cluster (shared/partitions.py): a power of two, fixed for the life of the
    # data (the first node to start records it, and a node configured otherwise refuses to start).
    partitions: int = Field(default=16, ge=1, le=1024)
    # On a cluster, the most commands a process has in flight at once, blocking reads left out: each holds a
    # connection to its node, and the cluster client opens one per concurrent command and keeps it, so a burst
    # of requests would otherwise leave a connection per request open on each node.
    redis_max_in_flight: int = Field(default=64, ge=1)

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        # redis-py and arq would each fail later with a traceback of their own; say it once, here.
        if value == "":
            return None  # Compose and Kubernetes pass an unset optional value as an empty string
        if value is not None and not value.startswith(_REDIS_SCHEMES):
            raise ValueError(
                f"{value!r} has no scheme; it must start with redis://, rediss:// or unix:// "
                f"(e.g. redis://{value.split('/')[0] or '127.0.0.1:6379'}/0)"
            )
        return value

    # --- Upstream model ----------------------------------------------------------------------
    # Unset base URL means the built-in mock model served by `turnstream dev` (or `turnstream mock`).
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TURNSTREAM_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    openai_api_key: SecretStr = Field(
        default=SecretStr("not-needed"),
        validation_alias=AliasChoices("TURNSTREAM_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    default_model: str = "turnstream-mock"
    # The upstream model the default agents run on; unset = the built-in mock's `turnstream-mock`.
    upstream_model: str | None = None
    upstream_timeout_s: float = 600.0
    # The openai SDK's HTTP transport to the upstream. aiohttp (the SDK's own option) cost ~45% less worker CPU
    # per request than its default httpx, whose pool checks every idle connection on every request; "httpx"
    # is there for an upstream or proxy that only the default transport gets along with.
    upstream_http_client: Literal["aiohttp", "httpx"] = "aiohttp"

    # --- Agents --------------------------------------------------------------------------------
    # A Python module path ("pkg.agents") or a .py file that declares agent profiles and tools.
    agents: str = "worker.default_agents"
    # When true, a request whose `model` names no agent goes straight to that upstream model.
    allow_model_passthrough: bool = False

    # --- Limits (every one is enforced and tested) ---------------------------------------------
    max_input_bytes: int = 1_048_576  # request body ceiling -> 413
    max_json_depth: int = 64  # nesting of arrays/objects in a request body -> 400
    body_read_timeout_s: float = 30.0  # a request body must arrive whole within this -> 408
    max_input_items: int = 1000
    max_output_bytes: int = 262_144  # streamed text per turn -> incomplete
    first_token_timeout_s: float = 60.0
    turn_timeout_s: float = 600.0
    max_queue_depth: int = 10_000  # queued turns before the API answers 503 + Retry-After
    history_max_items: int = 200  # most items truncation "auto" reads back before windowing them by tokens

    # --- Retention ----------------------------------------------------------------------------
    stream_ttl_s: int = 86_400  # events stay replayable for a day
    # A conversation's live feed (GET /v1/conversations/{id}/events) holds a copy of every event of its turns,
    # uncompacted: it is for following live and reconnecting, so it lives this long after its last event, not
    # a day. 0 = no feed (every event then costs Redis one write less).
    conversation_feed_ttl_s: int = Field(default=600, ge=0)
    response_ttl_s: int = 30 * 86_400  # the same retention OpenAI uses for stored responses
    # store=false: a finished turn's working state (record and stream) lingers only this long, so the
    # request that created it can finish reading; it is never served by id.
    unstored_response_ttl_s: int = 300
    conversation_ttl_s: int = 30 * 86_400  # refreshed on every turn
    stream_maxlen: int = 20_000  # approximate MAXLEN per response stream
    # A finished turn's stream is kept as one compressed entry and its record's Request/Response JSON
    # compressed (README, "The Redis stream contract"): about a quarter of the memory. false writes the
    # form every entry had before; readers read both.
    compact_finished_turns: bool = True

    # --- Worker -------------------------------------------------------------------------------
    max_jobs: int = 50
    poll_delay_s: float = 0.5  # fallback when no wake token arrives
    coalesce_ms: float = 20.0  # longest a delta waits to be merged with the next one
    # Delta-only writes of all a worker's turns share one Redis pipeline per tick (0 = each writes alone).
    append_tick_ms: float = 10.0
    job_max_tries: int = 3
    # A running turn renews its lease this often; a dead worker's turn is re-run once it lapses.
    lease_s: float = 15.0
    # On SIGTERM a worker stops taking turns and lets running ones finish for this long; the rest go back
    # to the queue and continue on another worker (keep it under the orchestrator's grace period).
    shutdown_grace_s: float = 45.0
    # Longest wait between retries while Redis is unreachable (exponential backoff with jitter up to this).
    redis_retry_max_s: float = 5.0
    # How often one worker of the fleet looks for turns whose job was lost and runs them again.
    sweep_interval_s: float = 5.0
    # Each worker announces itself this often (id, host, running turns); /readyz and `turnstream status` count
    # a worker alive while its last heartbeat is younger than the TTL (three missed beats).
    worker_heartbeat_s: float = Field(default=5.0, gt=0)
    worker_heartbeat_ttl_s: int = Field(default=15, ge=1)

    @field_validator("worker_heartbeat_ttl_s")
    @classmethod
    def _ttl_outlives_beats(cls, ttl: int, info: ValidationInfo) -> int:
        beat = info.data.get("worker_heartbeat_s")
        if beat is not None and ttl <= beat:
            # A record that expires before the next beat would make every live worker flicker out.
            raise ValueError(f"must be longer than TURNSTREAM_WORKER_HEARTBEAT_S ({beat:g} s)")
        return ttl
    # How a re-run asks the model to continue a message its dead attempt left half-written: "instruction"
    # (the partial message plus a system instruction, works everywhere) or "continue_final_message" (vLLM).
    upstream_continuation: Literal["instruction", "continue_final_message"] = "instruction"
    # --- Upstream retries and fallbacks (README "When the model provider fails") ---------------------
    # How long one turn may spend retrying its upstream(s), from its first failure; an agent may set its own.
    upstream_retry_budget_s: float = Field(default=120.0, gt=0)
    # Backoff without a Retry-After: base * 2^(failures - 1), capped, each wait a random 50-100% of that.
    upstream_retry_base_s: float = Field(default=0.5, gt=0)
    upstream_retry_max_s: float = Field(default=20.0, gt=0)
    # A wait longer than this does not hold the worker's slot: the turn goes back to the queue, due then.
    upstream_retry_inline_max_s: float = Field(default=5.0, ge=0)
    # Failed calls to one upstream within a turn before the turn moves on to the agent's next upstream.
    upstream_attempts_before_fallback: int = Field(default=3, ge=1)
    # An upstream failing this many times (fleet-wide, each within the window of the last, with no retried
    # call answered in between) cools down for a while:
    # every worker then starts its turns on the agent's next upstream.
    upstream_cooldown_failures: int = Field(default=3, ge=1)
    upstream_cooldown_window_s: float = Field(default=60.0, gt=0)
    upstream_cooldown_s: float = Field(default=30.0, gt=0)

    # --- Logs -------------------------------------------------------------------------------
    # "json": one object per line with the turn's ids, for log shippers; "human" for terminals.
    log_format: Literal["human", "json"] = "human"

    # --- API ----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    sse_keepalive_s: float = 15.0
    max_sse_streams: int = 5_000  # open SSE streams per API process before new ones get 503 + Retry-After
    # A client whose socket stays full this long (it stopped reading) is dropped; it can resume later.
    sse_stall_timeout_s: float = 30.0
    # cancel_on_disconnect: how long a streamed create's turn outlives its client, waiting for it to resume
    # (Last-Event-ID, on any API node) before it is cancelled. Short: a chat tab that is gone should stop paying.
    disconnect_grace_s: float = Field(default=0.5, ge=0, le=3600)
    # A tool call waiting on a person's approval is refused past this; the next turn states it in the history.
    approval_timeout_s: int = Field(default=86_400, ge=1)
    sync_wait_timeout_s: float = 660.0  # how long a non-stream, non-background request waits
    # A create that waits for its turn (plain, streamed, WebSocket, AG-UI, compact) is refused with 503
    # no_live_workers while no worker of the queue is alive; background creates are queued all the same.
    # false queues every create (a fleet that scales its workers from zero on queue depth).
    require_live_worker: bool = True
    # How long this API process trusts a look at the workers' heartbeats that found one alive (a look that
    # found none is never reused): at most one read per interval, however many creates come.
    live_worker_cache_s: float = Field(default=1.0, ge=0, le=60)
    # WebSocket mode: a socket's age limit (the Open Responses standard's 60 minutes), after which it ends with
    # websocket_connection_limit_reached once its in-flight response is done; and how many creates may wait
    # behind the one in flight before more are refused.
    websocket_max_connection_s: float = Field(default=3600.0, gt=0)
    websocket_max_queued_creates: int = Field(default=16, ge=1)

    # --- Keys and projects (README "Keys and projects") -----------------------------------------
    # on: every /v1 route needs `Authorization: Bearer <key>`; off: open, one project, for a deployment
    # behind a gateway that authenticates. Unset: on for `turnstream api`, off for `turnstream dev`.
    auth: bool | None = None
    # Keys the API creates or updates at start (JSON list; see shared/api_keys.py), inline or from a file.
    api_keys: SecretStr | None = None
    api_keys_file: Path | None = None
    default_key_rpm: int = Field(default=600, ge=1)  # `turnstream keys create` without --rpm
    default_key_max_concurrent: int = Field(default=20, ge=1)  # ... without --max-concurrent
    idempotency_ttl_s: int = 86_400  # how long an Idempotency-Key is remembered
    # The key `turnstream chat` and `turnstream tail --url` send to an API that checks keys.
    api_key: SecretStr | None = None

    # --- Metrics ------------------------------------------------------------------------------
    # Each worker process serves /metrics on this port (bound to TURNSTREAM_HOST); 0 = off. One port per
    # process: run several worker processes on one host with a port each. The API serves /metrics itself.
    worker_metrics_port: int = 0

    # --- Tracing: OpenTelemetry's own variables (the TURNSTREAM_ names work too) ------------------
    # Tracing is on when an exporter ("otlp", "console") or an OTLP endpoint is set, and the SDK is not
    # disabled. The SDK reads its other variables (OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER, ...).
    otel_traces_exporter: str | None = Field(
        default=None, validation_alias=AliasChoices("TURNSTREAM_OTEL_TRACES_EXPORTER", "OTEL_TRACES_EXPORTER")
    )
    otel_exporter_otlp_endpoint: str | None = Field(  # a base URL: /v1/traces is appended
        default=None,
        validation_alias=AliasChoices("TURNSTREAM_OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(  # the full URL, used as it is
        default=None,
        validation_alias=AliasChoices(
            "TURNSTREAM_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        ),
    )
    otel_service_name: str | None = Field(
        default=None, validation_alias=AliasChoices("TURNSTREAM_OTEL_SERVICE_NAME", "OTEL_SERVICE_NAME")
    )
    otel_sdk_disabled: bool = Field(
        default=False, validation_alias=AliasChoices("TURNSTREAM_OTEL_SDK_DISABLED", "OTEL_SDK_DISABLED")
    )

    # --- Webhooks -----------------------------------------------------------------------------
    # How often each worker looks for webhook deliveries that are due.
    webhook_poll_s: float = 1.0
    webhook_timeout_s: float = 10.0  # one delivery attempt, connect to last byte
    # Waits between attempts: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (~27.6 h of retries, 8 attempts),
    # then the delivery goes to the dead-letter list.
    webhook_retry_delays_s: list[float] = [5, 300, 1800, 7200, 18000, 36000, 36000]
    webhook_max_concurrent: int = 16  # deliveries in flight per worker
    webhook_max_endpoints: int = 20  # endpoints per project
    webhook_dead_letter_max: int = 10_000  # newest dead deliveries kept

    # --- Mock model ---------------------------------------------------------------------------
    mock_port: int = 8001
    mock_token_delay_ms: float = 15.0
    # Prompts longer than this (in words) get OpenAI's context_length_exceeded error from the mock.
    mock_context_tokens: int = 128_000

    @property
    def upstream_base_url(self) -> str:
        return self.openai_base_url or f"http://127.0.0.1:{self.mock_port}/v1"

    @property
    def otel_traces_url(self) -> str | None:
        """Where spans go over OTLP/HTTP, or None for the SDK's default (localhost:4318)."""
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    @property
    def tracing_exporter(self) -> str | None:
        """"otlp" or "console" when tracing is on, else None."""
        if self.otel_sdk_disabled:
            return None
        exporter = (self.otel_traces_exporter or "").strip().lower()
        if exporter in ("otlp", "console"):
            return exporter
        if not exporter and self.otel_traces_url:
            return "otlp"
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
