"""The Chat Completions options the mock honours as OpenAI does: tool_choice, parallel_tool_calls and
response_format. Each is applied to the brain's reply, so turnstream's mapping of them is testable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shared.mock.brain import Reply, ToolCall


class BadOption(ValueError):
    """Raised when an option has a shape OpenAI would reject; the server answers 400 naming it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check(body: dict[str, Any]) -> None:
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("none", "auto", "required"):
        function = choice.get("function") if isinstance(choice, dict) else None
        if not (choice.get("type") == "function" and isinstance(function, dict)
                and isinstance(function.get("name"), str)):
            raise BadOption("'tool_choice' must be none, auto, required or a named function.", "tool_choice")
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise BadOption("'response_format.type' must be text, json_object or json_schema.", "response_format")
        if kind == "json_schema" and not isinstance((fmt.get("json_schema") or {}).get("schema"), dict):
            raise BadOption("'response_format.json_schema.schema' must be an object.", "response_format")


def offered(body: dict[str, Any], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The tools the brain may pick from."""
    choice = body.get("tool_choice")
    if choice == "none":
        return []
    if isinstance(choice, dict):
        return [t for t in tools or [] if t["function"]["name"] == choice["function"]["name"]]
    return list(tools or [])


def apply_tool_choice(reply: Reply, body: dict[str, Any], names: list[str], new_call_id: Callable[[], str]) -> Reply:
    choice = body.get("tool_choice")
    forced = None
    if isinstance(choice, dict):
        forced = choice["function"]["name"]
    elif choice == "required" and names:
        forced = names[0]
    if forced is not None and not reply.tool_calls and forced in names:
        # Forced to call but had nothing to call: call with empty arguments, as a model forced to would.
        reply = Reply(tool_calls=(ToolCall(new_call_id(), forced, "{}"),))
    if body.get("parallel_tool_calls") is False and len(reply.tool_calls) > 1:
        reply = replace(reply, tool_calls=reply.tool_calls[:1])
    return reply


def shaped_text(text: str, body: dict[str, Any]) -> str:
    """The reply text as the response_format asks for it."""
    fmt = body.get("response_format") or {"type": "text"}
    if fmt["type"] == "json_object":
        return json.dumps({"answer": text})
    if fmt["type"] == "json_schema":
        return json.dumps(_instance(fmt["json_schema"]["schema"], text))
    return text


def _instance(schema: Any, text: str) -> Any:
    """A value valid for simple JSON schemas: every property present, strings carry the reply text."""
    if not isinstance(schema, dict):
        return text
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for union in ("anyOf", "oneOf"):
        if schema.get(union):
            return _instance(schema[union][0], text)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: _instance(sub, text) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_instance(schema.get("items"), text)]
    examples: dict[str, Any] = {"integer": len(text.split()), "number": float(len(text)), "boolean": True,
                                "null": None}
    return examples.get(str(kind), text)
