"""The one settings class. Nothing else in the project reads the environment."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TURNSTREAM_", env_file=".env", extra="ignore")

    # --- Redis -------------------------------------------------------------------------------
    # Unset means the embedded in-process fakeredis, which only `turnstream dev` can use.
    redis_url: str | None = None
    queue_name: str = "turnstream:queue"

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
    upstream_timeout_s: float = 600.0

    # --- Agents --------------------------------------------------------------------------------
    # A Python module path ("pkg.agents") or a .py file that declares agent profiles and tools.
    agents: str = "worker.default_agents"
    # When true, a request whose `model` names no agent goes straight to that upstream model.
    allow_model_passthrough: bool = False

    # --- Limits (every one is enforced and tested) ---------------------------------------------
    max_input_bytes: int = 1_048_576  # request body ceiling -> 413
    max_input_items: int = 1000
    max_output_bytes: int = 262_144  # streamed text per turn -> incomplete
    first_token_timeout_s: float = 60.0
    turn_timeout_s: float = 600.0
    max_queue_depth: int = 10_000  # queued turns before the API answers 503 + Retry-After
    history_max_items: int = 200  # window of conversation items sent upstream

    # --- Retention ----------------------------------------------------------------------------
    stream_ttl_s: int = 86_400  # events stay replayable for a day
    response_ttl_s: int = 30 * 86_400  # the same retention OpenAI uses for stored responses
    unstored_response_ttl_s: int = 3_600  # store=false: kept only long enough to be polled
    conversation_ttl_s: int = 30 * 86_400  # refreshed on every turn
    stream_maxlen: int = 20_000  # approximate MAXLEN per response stream

    # --- Worker -------------------------------------------------------------------------------
    max_jobs: int = 50
    poll_delay_s: float = 0.5  # fallback when no wake token arrives
    coalesce_ms: float = 20.0  # longest a delta waits to be merged with the next one
    job_max_tries: int = 3
    # A running turn renews its lease this often; a dead worker's turn is re-run once it lapses.
    lease_s: float = 15.0

    # --- API ----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    sse_keepalive_s: float = 15.0
    max_sse_streams: int = 5_000  # open SSE streams per API process before new ones get 503 + Retry-After
    # A client whose socket stays full this long (it stopped reading) is dropped; it can resume later.
    sse_stall_timeout_s: float = 30.0
    sync_wait_timeout_s: float = 660.0  # how long a non-stream, non-background request waits

    # --- Mock model ---------------------------------------------------------------------------
    mock_port: int = 8001
    mock_token_delay_ms: float = 15.0

    @property
    def upstream_base_url(self) -> str:
        return self.openai_base_url or f"http://127.0.0.1:{self.mock_port}/v1"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
