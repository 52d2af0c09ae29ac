"""The pydantic models that cross Redis between the API and the worker.

Items (messages, function calls, their outputs) are stored in exactly the JSON shape OpenAI's Responses and
Conversations APIs return, so the API can hand them back without translation.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Item = dict[str, Any]


class Status(StrEnum):
    QUEUED = "queued"  # accepted, waiting for a worker (or for the conversation's previous turn)
    IN_PROGRESS = "in_progress"  # a worker is running it
    COMPLETED = "completed"  # the model finished (including "ended with client function calls")
    FAILED = "failed"  # upstream error, deadline, or the turn ran out of attempts
    CANCELLED = "cancelled"  # cancel was requested
    INCOMPLETE = "incomplete"  # stopped at a limit: output bytes/tokens or tool rounds

    @property
    def terminal(self) -> bool:
        return self not in (Status.QUEUED, Status.IN_PROGRESS)


TERMINAL_STATUSES = frozenset(s.value for s in Status if s.terminal)

LockPolicy = Literal["wait", "reject"]

# What every object belongs to when the API checks no keys (TURNSTREAM_AUTH=off), and objects stored before
# projects existed.
DEFAULT_PROJECT = "default"


class TurnRequest(BaseModel):
    """A validated turn, stored by the API in the response hash and read back by the worker."""

    model_config = ConfigDict(extra="forbid")

    response_id: str
    created_at: int = Field(default_factory=lambda: int(time.time()))
    # Accept time to the millisecond: the start of the server-side time to first token.
    accepted_at_ms: int = Field(default_factory=lambda: time.time_ns() // 1_000_000)
    # W3C trace context of the API request that accepted the turn (tracing on), so every attempt's spans
    # join that request's trace.
    traceparent: str | None = None
    model: str
    instructions: str | None = None
    input: list[Item]
    conversation_id: str | None = None
    previous_response_id: str | None = None
    # The context of previous_response_id, carried from a WebSocket's connection-local state when the previous
    # response was store:false (its record is not a base): its history, input and output, oldest first. The
    # worker sends it instead of reading the chain from Redis. None: read the stored chain, as over HTTP.
    context: list[Item] | None = None
    tools: list[Item] = Field(default_factory=list)  # client function tools, Responses format
    tool_choice: str | Item = "auto"
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    store: bool = True
    background: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    conversation_lock: LockPolicy = "wait"
    project: str = DEFAULT_PROJECT  # the project of the key that created it; no other project sees it
    key_id: str | None = None  # that key, whose concurrent-turn slot the turn holds until it ends
    # Settings the Response echoes back (the Open Responses spec requires every one) and, where the upstream
    # Chat Completions API takes them, the worker passes on. None means the request left it out.
    text: Item = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["auto", "disabled"] = "disabled"
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_logprobs: int | None = None
    reasoning: Item | None = None  # {"effort", "summary"}
    max_tool_calls: int | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    include: list[str] = Field(default_factory=list)
    # context_management [{"type": "compaction", "compact_threshold"}]: compact this turn's history past it.
    compact: bool = False
    compact_threshold: int | None = None
    compact_only: bool = False  # POST /v1/responses/compact: summarise the context, run no agent


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0  # of output_tokens; from the upstream's completion_tokens_details

    def add(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )

    def to_openai(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


# The Response error code of a turn whose prompt was longer than the model takes. OpenAI's Response error
# codes have no context_length_exceeded (its SDK refuses the value there); a plain create still answers 400
# context_length_exceeded, as OpenAI does and the Open Responses spec says for truncation "disabled".
PROMPT_TOO_LONG = "invalid_prompt"


class TurnOutcome(BaseModel):
    """What a finished turn produced; turned into the stored Response and the terminal event."""

    status: Status
    output: list[Item] = Field(default_factory=list)
    usage: Usage | None = None
    error: dict[str, str] | None = None  # {"code", "message"}
    incomplete_reason: str | None = None


class AgentCard(BaseModel):
    """What a worker publishes about one agent profile, so API nodes can list and validate models."""

    name: str
    description: str = ""
    model: str
    tools: list[str] = Field(default_factory=list)
    max_tool_rounds: int = 8
    tool_timeout_s: float = 30.0
    context_budget_tokens: int = 128_000
    truncation: Literal["auto", "disabled"] = "disabled"  # the agent's default for requests that do not say
