"""Turns stored Responses-format items into the Chat Completions messages an upstream model takes."""

from __future__ import annotations

import json
from typing import Any

from shared import compaction_item
from shared.models import Item

Message = dict[str, Any]
# How a compaction item reaches the model: a system message standing where the history it replaced was.
SUMMARY_PREFIX = "Summary of the earlier conversation:"
_TOOL_ITEMS = ("function_call", "function_call_output")


def window(items: list[Item], max_items: int) -> list[Item]:
    """The most recent `max_items` items, without tool results whose call was cut off.

    Models reject a tool message that answers no call in the prompt; a cut can land between parallel
    calls, so every result is checked, not only the first item.
    """
    recent = items[-max_items:] if max_items > 0 else []
    calls = {item.get("call_id") for item in recent if item.get("type") == "function_call"}
    return [i for i in recent if i.get("type") != "function_call_output" or i.get("call_id") in calls]


def exchanges(items: list[Item]) -> list[list[Item]]:
    """The items grouped so that no group boundary falls between a function call and its result.

    Calls and results sit next to each other in history (results follow their calls, and a client's
    result opens the turn after the one that ended with its call), so each run of them is one group.
    """
    groups: list[list[Item]] = []
    for item in items:
        if groups and item.get("type") in _TOOL_ITEMS and groups[-1][-1].get("type") in _TOOL_ITEMS:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if part.get("type") in ("input_text", "output_text", "text", "summary_text"):
            parts.append(part.get("text", ""))
        elif part.get("type") == "refusal":
            parts.append(part.get("refusal", ""))
    return "".join(parts)


def _user_content(content: Any) -> str | list[dict[str, Any]]:
    """Plain text when the message is text only; chat content parts when it carries images or files."""
    if isinstance(content, str) or not any(p.get("type") in ("input_image", "input_file") for p in content or []):
        return _text_of(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "input_image" and part.get("image_url"):
            image = {"url": part["image_url"], "detail": part.get("detail") or "auto"}
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and part.get("file_data"):
            parts.append({"type": "file", "file": {"filename": part.get("filename"), "file_data": part["file_data"]}})
        elif kind == "input_text":
            parts.append({"type": "text", "text": part.get("text", "")})
    return parts


def to_messages(instructions: str, items: list[Item]) -> list[Message]:
    messages: list[Message] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role", "user")
            if role == "assistant":
                messages.append({"role": "assistant", "content": _text_of(item.get("content"))})
            elif role in ("system", "developer"):
                messages.append({"role": "system", "content": _text_of(item.get("content"))})
            else:
                messages.append({"role": "user", "content": _user_content(item.get("content"))})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"},
            }
            last = messages[-1] if messages else None
            # Parallel calls (and text said before them) belong to one assistant message.
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "reasoning":
            continue  # Chat Completions takes no reasoning back; OpenAI-compatible servers reject or ignore it
        elif kind == "compaction":
            summary = compaction_item.summary_of(item)
            if summary is not None:
                messages.append({"role": "system", "content": f"{SUMMARY_PREFIX}\n{summary}"})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": output if isinstance(output, str)
                 else _text_of(output)}
            )
        elif kind == "mcp_call":
            messages += tool_run_messages(item)
        # An approval request and its answer are not shown as such: the tool's run (`mcp_call`, made when the
        # answer came) stands for both, so the model sees a call and its result together, as it made them.
    return messages


def tool_run_messages(item: Item) -> list[Message]:
    """An approved (or denied, or expired) tool call, as the call and its result."""
    call_id = item.get("approval_request_id") or item["id"]
    function = {"name": item["name"], "arguments": item["arguments"] or "{}"}
    call = {"id": call_id, "type": "function", "function": function}
    # A refusal (denied, expired) reads as a failed tool's result does: {"error": ...}.
    error = item.get("error")
    result = item.get("output") if error is None else json.dumps({"error": error.get("content")})
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": result or ""},
    ]


def chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Responses-format function tool in Chat Completions format."""
    function: dict[str, Any] = {
        "name": tool["name"],
        "description": tool.get("description") or "",
        "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
    }
    if tool.get("strict"):
        function["strict"] = True  # only when asked: not every upstream knows the key
    return {"type": "function", "function": function}
