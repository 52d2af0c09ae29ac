"""Builds the OpenAI `Response` object for a turn in any state; the API and the worker share it.

Every field the Open Responses spec's `ResponseResource` requires is present in every state, and every
request setting is echoed back: as sent, or as OpenAI's default when the request left it out.
"""

from __future__ import annotations

import time
from typing import Any

from shared.models import Status, TurnOutcome, TurnRequest

# OpenAI's defaults for the sampling settings a request may leave out.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_PENALTY = 0.0
DEFAULT_TOP_LOGPROBS = 0
DEFAULT_SERVICE_TIER = "auto"


def build_response(
    req: TurnRequest, status: Status, outcome: TurnOutcome | None = None
) -> dict[str, Any]:
    output = outcome.output if outcome else []
    incomplete = (
        {"reason": outcome.incomplete_reason} if outcome and outcome.incomplete_reason else None
    )
    return {
        "id": req.response_id,
        "object": "response",
        "created_at": req.created_at,
        # Built once, when the turn commits, so the time is the moment it finished.
        "completed_at": int(time.time()) if status == Status.COMPLETED else None,
        "status": status.value,
        "background": req.background,
        "error": outcome.error if outcome and outcome.error else None,
        "incomplete_details": incomplete,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls,
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "conversation": {"id": req.conversation_id} if req.conversation_id else None,
        "temperature": _or(req.temperature, DEFAULT_TEMPERATURE),
        "top_p": _or(req.top_p, DEFAULT_TOP_P),
        "presence_penalty": _or(req.presence_penalty, DEFAULT_PENALTY),
        "frequency_penalty": _or(req.frequency_penalty, DEFAULT_PENALTY),
        "top_logprobs": req.top_logprobs if req.top_logprobs is not None else DEFAULT_TOP_LOGPROBS,
        "reasoning": {
            "effort": (req.reasoning or {}).get("effort"),
            "summary": (req.reasoning or {}).get("summary"),
        },
        "tool_choice": req.tool_choice,
        "tools": req.tools,
        "text": req.text,
        "truncation": req.truncation,
        "usage": outcome.usage.to_openai() if outcome and outcome.usage else None,
        "metadata": _metadata(req, outcome),
        "store": req.store,
        "service_tier": req.service_tier or DEFAULT_SERVICE_TIER,
        "safety_identifier": req.safety_identifier,
        "prompt_cache_key": req.prompt_cache_key,
        "user": req.user,
    }


# The Response metadata key naming the upstream that served a turn of an agent with fallback upstreams.
UPSTREAM_METADATA_KEY = "turnstream_upstream"


def _metadata(req: TurnRequest, outcome: TurnOutcome | None) -> dict[str, str]:
    if outcome is None or outcome.upstream is None:
        return req.metadata
    return {**req.metadata, UPSTREAM_METADATA_KEY: outcome.upstream}


def _or(value: float | None, default: float) -> float:
    # Always a JSON number (1.0, not 1): the spec types these as numbers and strict clients check.
    return float(value) if value is not None else default
