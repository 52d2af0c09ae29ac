"""The Chat Completions request for one model round: the turn's settings mapped onto the upstream's params.

Responses → Chat Completions:
    tool_choice none/auto/required          tool_choice (forcing applies to the turn's first round only)
    tool_choice {"type":"function",name}    tool_choice {"type":"function","function":{"name"}}
    tool_choice allowed_tools               only the allowed tools are offered; its mode is the tool_choice
    text.format json_object / json_schema   response_format
    text.verbosity                          verbosity
    reasoning.effort                        reasoning_effort
    max_tool_calls                          one call per round while it is set; tool_choice "none" once spent
    max_output_tokens (or the agent's)      max_tokens
    temperature, top_p, presence_penalty, frequency_penalty, user, safety_identifier, prompt_cache_key,
    service_tier                            passed as they are, and only when the request set them
"""

from __future__ import annotations

from typing import Any

from shared.models import Item, TurnRequest
from worker.agents import Agent

Message = dict[str, Any]

_PASSED_AS_IS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
)


def chat_request(
    req: TurnRequest, agent: Agent, messages: list[Message], chat_tools: list[dict[str, Any]], output: list[Item]
) -> dict[str, Any]:
    """`output` is what the turn produced so far: its function calls count against `max_tool_calls`."""
    kwargs: dict[str, Any] = {
        "model": agent.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    calls_made = sum(1 for item in output if item.get("type") == "function_call")
    tools = _offered(chat_tools, req.tool_choice)
    if tools:
        kwargs["tools"] = tools
        kwargs["parallel_tool_calls"] = req.parallel_tool_calls
        choice = _tool_choice(req.tool_choice, first_round=calls_made == 0)
        if req.max_tool_calls is not None:
            # One call per round makes the cap exact: the loop never has more calls in hand than it may run.
            kwargs["parallel_tool_calls"] = False
            if calls_made >= req.max_tool_calls:
                choice = "none"
        if choice != "auto":
            kwargs["tool_choice"] = choice
    max_tokens = req.max_output_tokens or agent.max_output_tokens
    if max_tokens:
        kwargs["max_tokens"] = max_tokens
    for name in _PASSED_AS_IS:
        value = getattr(req, name)
        if value is not None:
            kwargs[name] = value
    response_format = _response_format(req.text.get("format") or {"type": "text"})
    if response_format is not None:
        kwargs["response_format"] = response_format
    if req.text.get("verbosity"):
        kwargs["verbosity"] = req.text["verbosity"]
    if req.reasoning and req.reasoning.get("effort"):
        kwargs["reasoning_effort"] = req.reasoning["effort"]
    return kwargs


def _offered(chat_tools: list[dict[str, Any]], choice: str | Item) -> list[dict[str, Any]]:
    # The spec makes allowed_tools a hard limit; a model cannot call a tool it was never shown.
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = {t["name"] for t in choice["tools"]}
        return [t for t in chat_tools if t["function"]["name"] in allowed]
    return chat_tools


def _tool_choice(choice: str | Item, first_round: bool) -> str | dict[str, Any]:
    if isinstance(choice, str):
        mode = choice
    elif choice.get("type") == "allowed_tools":
        mode = choice.get("mode", "auto")
    elif first_round:
        return {"type": "function", "function": {"name": choice["name"]}}
    else:
        mode = "auto"
    # Forcing a call on every round would loop until the round limit: once the model has called a tool,
    # it is free to answer.
    if mode == "required" and not first_round:
        return "auto"
    return mode


def _response_format(fmt: Item) -> dict[str, Any] | None:
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema: dict[str, Any] = {"name": fmt["name"], "schema": fmt["schema"], "strict": bool(fmt.get("strict"))}
        if fmt.get("description"):
            schema["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": schema}
    return None
