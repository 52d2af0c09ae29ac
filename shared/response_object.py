"""Builds the OpenAI `Response` object for a turn in any state; the API and the worker share it."""

from __future__ import annotations

from typing import Any

from shared.models import Status, TurnOutcome, TurnRequest


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
        "status": status.value,
        "background": req.background,
        "error": outcome.error if outcome and outcome.error else None,
        "incomplete_details": incomplete,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "conversation": {"id": req.conversation_id} if req.conversation_id else None,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tool_choice": req.tool_choice,
        "tools": req.tools,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": outcome.usage.to_openai() if outcome and outcome.usage else None,
        "metadata": req.metadata,
        "store": req.store,
        "user": req.user,
    }
