"""Request bodies as OpenAI defines them, validated once at the edge, and input normalised to stored items."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from api.errors import invalid
from api.media_parts import MEDIA_PART_TYPES, media_part
from shared import compaction_item, ids
from shared.models import Item, LockPolicy

Metadata = dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]]


class ConversationRef(BaseModel):
    id: str


class CreateResponseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=256)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    conversation: str | ConversationRef | None = None
    previous_response_id: str | None = None
    stream: bool | None = False
    background: bool | None = False
    store: bool | None = True
    metadata: Metadata | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    # turnstream's own option (send it with the SDK's extra_body): what a turn does when its
    # conversation already has one running. "wait" queues it behind; "reject" answers 409.
    # "interrupt" stops the turns ahead (cancelled, keeping what they produced); "rollback" also erases them.
    conversation_lock: LockPolicy = "wait"
    # turnstream's own option too: a streamed create whose client goes away (and does not resume within
    # TURNSTREAM_DISCONNECT_GRACE_S) cancels its turn.
    cancel_on_disconnect: bool | None = None
    # Generation options, checked in api/request_options.py, echoed on the Response, mapped upstream.
    include: list[str] | None = None
    text: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: dict[str, Any] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tool_calls: int | None = Field(default=None, ge=1)
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    prompt_cache_key: str | None = Field(default=None, max_length=64)
    safety_identifier: str | None = Field(default=None, max_length=64)
    context_management: list[dict[str, Any]] | None = None
    # Accepted: turnstream never pads events with an obfuscation field, whatever it says.
    stream_options: dict[str, Any] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        # Otherwise the union's first member speaks alone: "should be a valid string", though a list is fine too.
        if not isinstance(value, str | list):
            raise ValueError("expected a string or a list of input items")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: Metadata | None) -> Metadata | None:
        if value is not None and len(value) > 16:
            raise ValueError("at most 16 key-value pairs")
        return value

    @property
    def conversation_id(self) -> str | None:
        return self.conversation.id if isinstance(self.conversation, ConversationRef) else self.conversation


class CreateConversationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] | None = Field(default=None, max_length=20)
    metadata: Metadata | None = None


class UpdateConversationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: Metadata


_ROLES = ("user", "assistant", "system", "developer")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def normalise_input(value: str | list[dict[str, Any]], param: str = "input") -> list[Item]:
    """Every input form OpenAI accepts, as the item shapes the Conversations API returns."""
    if isinstance(value, str):
        if not value:
            raise invalid("'input' must not be empty.", param)
        return [_message("user", value)]
    if not value:
        raise invalid("'input' must contain at least one item.", param)
    return [_item(raw, f"{param}[{i}]") for i, raw in enumerate(value)]


def _item(raw: dict[str, Any], param: str) -> Item:
    kind = raw.get("type", "message")
    if kind == "message":
        role = raw.get("role")
        if role not in _ROLES:
            raise invalid(f"Invalid value for '{param}.role': expected one of {', '.join(_ROLES)}.", f"{param}.role")
        return _message(role, raw.get("content"), param, _given_id(raw, ids.MESSAGE, param))
    if kind == "function_call_output":
        call_id, output = raw.get("call_id"), raw.get("output")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"Missing required parameter: '{param}.call_id'.", f"{param}.call_id")
        if not isinstance(output, str):
            raise invalid(f"Invalid value for '{param}.output': expected a string.", f"{param}.output")
        return {
            "id": _given_id(raw, ids.FUNCTION_CALL_OUTPUT, param) or ids.function_call_output_id(),
            "type": "function_call_output",
            "call_id": call_id,
            "output": output,
            "status": "completed",
        }
    if kind == "function_call":
        for field in ("call_id", "name", "arguments"):
            if not isinstance(raw.get(field), str):
                raise invalid(f"Missing required parameter: '{param}.{field}'.", f"{param}.{field}")
        return {
            "id": _given_id(raw, ids.FUNCTION_CALL, param) or ids.function_call_id(),
            "type": "function_call",
            "call_id": raw["call_id"],
            "name": raw["name"],
            "arguments": raw["arguments"],
            "status": "completed",
        }
    if kind == "mcp_approval_response":
        request_id, approve, reason = raw.get("approval_request_id"), raw.get("approve"), raw.get("reason")
        if not ids.is_id(request_id, ids.APPROVAL_REQUEST):
            raise invalid(f"Invalid value for '{param}.approval_request_id': not an approval request id.",
                          f"{param}.approval_request_id")
        if not isinstance(approve, bool):
            raise invalid(f"Invalid value for '{param}.approve': expected true or false.", f"{param}.approve")
        if reason is not None and not isinstance(reason, str):
            raise invalid(f"Invalid value for '{param}.reason': expected a string.", f"{param}.reason")
        return {
            "id": _given_id(raw, ids.APPROVAL_RESPONSE, param) or ids.new_id(ids.APPROVAL_RESPONSE),
            "type": "mcp_approval_response",
            "approval_request_id": request_id,
            "approve": approve,
            "reason": reason,
        }
    if kind == "compaction":
        # Only this server's own summaries can be read back; another server's are opaque to it.
        if compaction_item.summary_of(raw) is None:
            raise invalid(
                f"'{param}.encrypted_content' is not a compaction item this server made.",
                f"{param}.encrypted_content",
            )
        return {
            "id": raw.get("id") or ids.compaction_id(),
            "type": "compaction",
            "encrypted_content": raw["encrypted_content"],
            "created_by": compaction_item.CREATED_BY,
        }
    raise invalid(f"Unsupported input item type '{kind}' in '{param}'.", f"{param}.type", "unsupported_value")


def _given_id(raw: dict[str, Any], prefix: str, param: str) -> str | None:
    """A client may name its items, with ids of the shape this service issues, so each stays addressable."""
    given = raw.get("id")
    if given is None or ids.is_id(given, prefix):
        return given
    raise invalid(
        f"Invalid value for '{param}.id': expected an id that begins with '{prefix}_' followed by 48 hex digits.",
        f"{param}.id",
    )


def _message(role: str, content: Any, param: str = "input", item_id: str | None = None) -> Item:
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        parts: list[dict[str, Any]] = [_text_part(text_type, content)]
    elif isinstance(content, list) and content:
        parts = [_part(p, text_type, f"{param}.content[{i}]") for i, p in enumerate(content)]
        for i, part in enumerate(parts):
            if part["type"] in MEDIA_PART_TYPES and role != "user":
                # Chat Completions takes images and files in user messages only; dropping them would be silent.
                where = f"{param}.content[{i}].type"
                raise invalid(f"'{where}': {role} messages take text only.", where, "unsupported_value")
    else:
        raise invalid(f"Invalid value for '{param}.content': expected a string or content parts.", f"{param}.content")
    return {"id": item_id or ids.message_id(), "type": "message", "role": role, "status": "completed", "content": parts}


def _text_part(kind: str, text: str) -> dict[str, Any]:
    return {"type": kind, "text": text, "annotations": []} if kind == "output_text" else {"type": kind, "text": text}


def _part(raw: Any, text_type: str, param: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise invalid(f"Invalid value for '{param}': expected an object.", param)
    kind = raw.get("type")
    if kind in ("input_text", "output_text", "text"):
        if not isinstance(raw.get("text"), str):
            raise invalid(f"Missing required parameter: '{param}.text'.", f"{param}.text")
        return _text_part(text_type, raw["text"])
    if kind in MEDIA_PART_TYPES and text_type == "input_text":
        return media_part(raw, param)
    raise invalid(f"Unsupported content part type '{kind}' in '{param}'.", f"{param}.type", "unsupported_value")


def function_tools(tools: list[dict[str, Any]] | None) -> list[Item]:
    """The request's client-side function tools, checked and in the shape the Response echoes back."""
    out: list[Item] = []
    for i, tool in enumerate(tools or []):
        param = f"tools[{i}]"
        if tool.get("type") != "function":
            raise invalid(
                f"Unsupported tool type '{tool.get('type')}' in '{param}': only function tools are supported.",
                f"{param}.type",
                "unsupported_value",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"Missing required parameter: '{param}.name'.", f"{param}.name")
        if not _TOOL_NAME.fullmatch(name):
            # The upstream would reject the whole turn for it; say so before the turn is queued.
            raise invalid(
                f"Invalid value for '{param}.name': 1-64 letters, digits, '_' or '-'.", f"{param}.name"
            )
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid(f"Invalid value for '{param}.description': expected a string.", f"{param}.description")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid(
                f"Invalid value for '{param}.parameters': expected a JSON schema object.", f"{param}.parameters"
            )
        out.append(
            {
                "type": "function",
                "name": name,
                "description": description,
                "parameters": parameters,
                "strict": bool(tool.get("strict", False)),
            }
        )
    return out
