"""An AG-UI run's input (RunAgentInput) as a turn of the thread's conversation: which messages are new, as
Responses input items, plus the client's tools and context.

A thread is a conversation of the caller's project whose id is derived from the project and the threadId, so
no index is needed and another project's thread of the same name is another conversation. A message becomes
an item whose id is derived from its AG-UI id (or is its own id, when the service issued it), so a message
the conversation already holds is recognised and not added twice: clients that send the whole history
(CopilotKit) and clients that send only the new message (Agent Framework's AGUIChatClient) both work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ag_ui.core import (
    AssistantMessage,
    Context,
    DeveloperMessage,
    ImageInputContent,
    InputContentUrlSource,
    Message,
    RunAgentInput,
    SystemMessage,
    TextInputContent,
    Tool,
    ToolMessage,
    UserMessage,
)
from pydantic import Field

from api.errors import invalid
from shared import ids, partitions

Item = dict[str, Any]


class RunInput(RunAgentInput):
    """AG-UI's RunAgentInput, camelCase or snake_case; `tools`, `context` and `forwardedProps` may be left out."""

    tools: list[Tool] = Field(default_factory=list)
    context: list[Context] = Field(default_factory=list)
    forwarded_props: Any = Field(default_factory=dict)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:48]


def thread_conversation_id(project: str, thread_id: str) -> str:
    """The conversation a thread is: the same for every run of the thread, different in every project (and, on a
    cluster, in the partition its digest picks: shared/partitions.py)."""
    digest = _digest("agui-thread", project, thread_id)
    digits = partitions.for_new(seed=digest)
    return f"{ids.CONVERSATION}_{digits}{digest[len(digits):]}"


def _item_id(prefix: str, conversation_id: str, message_id: str) -> str:
    # A message the service itself sent (an assistant message's id is its item id) keeps its id.
    if ids.is_id(message_id, prefix):
        return message_id
    return f"{prefix}_{_digest(conversation_id, prefix, message_id)}"


@dataclass
class Held:
    """What a conversation already holds, by the ids a client can send back."""

    item_ids: set[str] = field(default_factory=set)
    call_ids: set[str] = field(default_factory=set)  # calls that are in the conversation
    answered: set[str] = field(default_factory=set)  # calls whose output is in the conversation

    @classmethod
    def of(cls, items: list[Item]) -> Held:
        held = cls()
        for item in items:
            held.item_ids.add(item.get("id", ""))
            if item.get("type") == "function_call":
                held.call_ids.add(item["call_id"])
            elif item.get("type") == "function_call_output":
                held.answered.add(item["call_id"])
        return held


def _holds(held: Held, conversation_id: str, message: Message) -> bool:
    if isinstance(message, ToolMessage):
        return message.tool_call_id in held.answered
    if isinstance(message, AssistantMessage) and any(call.id in held.call_ids for call in message.tool_calls or ()):
        return True
    return _item_id(ids.MESSAGE, conversation_id, message.id) in held.item_ids


def new_items(run: RunInput, conversation_id: str, held: Held) -> list[Item]:
    """The run's messages the conversation does not hold yet, as input items, in order.

    Whatever comes before the last message the conversation holds is history the client sent again, though
    perhaps under new ids (Agent Framework's function-invocation loop re-sends the user's message with a
    fresh id, with the call it already received and the call's result): only what follows it is new.
    """
    items: list[Item] = []

    def add(item: Item) -> None:
        held.item_ids.add(item["id"])
        items.append(item)

    known = [i for i, message in enumerate(run.messages) if _holds(held, conversation_id, message)]
    start = known[-1] + 1 if known else 0
    for index, message in enumerate(run.messages[start:], start):
        param = f"messages[{index}]"
        if isinstance(message, (UserMessage, SystemMessage, DeveloperMessage)):
            item_id = _item_id(ids.MESSAGE, conversation_id, message.id)
            if item_id not in held.item_ids:
                add({"type": "message", "id": item_id, "role": message.role, "content": _content(message, param)})
        elif isinstance(message, AssistantMessage):
            item_id = _item_id(ids.MESSAGE, conversation_id, message.id)
            if message.content and item_id not in held.item_ids:
                add({"type": "message", "id": item_id, "role": "assistant", "content": message.content})
            for call in message.tool_calls or ():
                if call.id not in held.call_ids:
                    held.call_ids.add(call.id)
                    add({
                        "type": "function_call",
                        "id": _item_id(ids.FUNCTION_CALL, conversation_id, call.id),
                        "call_id": call.id,
                        "name": call.function.name,
                        "arguments": call.function.arguments,
                    })
        elif isinstance(message, ToolMessage):
            if message.tool_call_id not in held.answered:
                held.answered.add(message.tool_call_id)
                output = message.content if message.error is None else json.dumps({"error": message.error})
                add({
                    "type": "function_call_output",
                    "id": _item_id(ids.FUNCTION_CALL_OUTPUT, conversation_id, message.id),
                    "call_id": message.tool_call_id,
                    "output": output,
                })
        # Activity and reasoning messages are the UI's own: nothing a model is sent.
    return items


def _content(message: UserMessage | SystemMessage | DeveloperMessage, param: str) -> str | list[dict[str, Any]]:
    if isinstance(message.content, str):
        return message.content
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(message.content):
        where = f"{param}.content[{index}]"
        if isinstance(part, TextInputContent):
            parts.append({"type": "input_text", "text": part.text})
        elif isinstance(part, ImageInputContent):
            source = part.source
            if isinstance(source, InputContentUrlSource):
                url = source.value
            else:
                url = f"data:{source.mime_type};base64,{source.value}"
            parts.append({"type": "input_image", "image_url": url, "detail": "auto"})
        else:
            raise invalid(
                f"'{where}' is a {part.type} part; this endpoint takes text and image parts.", f"{where}.type",
                "unsupported_value",
            )
    return parts


def function_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    """The frontend's tools, as client function tools: the run ends with their calls, the client runs them."""
    return [
        {
            "type": "function",
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}},
        }
        for tool in tools
    ]


def context_instructions(context: list[Context]) -> str | None:
    """The application's context for this run, added to the agent's instructions."""
    if not context:
        return None
    lines = "\n".join(f"- {entry.description}: {entry.value}" for entry in context)
    return f"\n\nContext from the application:\n{lines}"
