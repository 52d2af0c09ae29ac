"""The request's generation options (tool_choice, text, reasoning, include, ...), checked and normalised.

Each option comes out in the shape the Response echoes back, which is also what the worker maps to the
upstream Chat Completions request. An option turnstream cannot honour is a 400 naming it, never dropped.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import invalid

ToolChoiceMode = Literal["none", "auto", "required"]
# Every value OpenAI's Responses API takes. Those naming items turnstream never produces (hosted tools,
# computer use) are trivially honoured; image URLs are always included; logprobs are not carried yet.
INCLUDE_VALUES = frozenset(
    {
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
        "file_search_call.results",
        "message.input_image.image_url",
        "message.output_text.logprobs",
        "reasoning.encrypted_content",
        "web_search_call.action.sources",
        "web_search_call.results",
    }
)
_NOT_CARRIED = "message.output_text.logprobs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FunctionChoice(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1)


class _AllowedTools(_Strict):
    type: Literal["allowed_tools"]
    mode: ToolChoiceMode = "auto"
    tools: list[_FunctionChoice] = Field(min_length=1, max_length=128)


class _TextFormat(_Strict):
    type: Literal["text"]


class _JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class _JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = False


class _Text(_Strict):
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class _Reasoning(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # Chat Completions upstreams return no reasoning summaries; "auto" lets the upstream decide (none).
    summary: Literal["auto"] | None = None
    generate_summary: Literal["auto"] | None = None  # the deprecated spelling of `summary`


_FORMATS: dict[str, type[_Strict]] = {
    "text": _TextFormat,
    "json_object": _JsonObjectFormat,
    "json_schema": _JsonSchemaFormat,
}

M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], value: Any, param: str) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = param + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise invalid(f"Unknown parameter: '{where}'.", where, "unknown_parameter") from None
        if first["type"] == "missing":
            raise invalid(f"Missing required parameter: '{where}'.", where, "missing_required_parameter") from None
        raise invalid(f"Invalid value for '{where}': {first['msg']}.", where) from None


def tool_choice(
    value: str | dict[str, Any] | None, client_tools: set[str], server_tools: set[str] | None
) -> str | dict[str, Any]:
    """`server_tools` are the agent's own tools; None when no worker has published the agent yet."""
    if value is None or isinstance(value, str):
        mode = value or "auto"
        if mode == "required" and server_tools is not None and not client_tools and not server_tools:
            raise invalid("tool_choice 'required' needs at least one tool.", "tool_choice")
        return mode
    kind = value.get("type")
    if kind == "function":
        choice = _parse(_FunctionChoice, value, "tool_choice")
        _check_names([choice.name], client_tools, server_tools, "tool_choice.name")
        return choice.model_dump()
    if kind == "allowed_tools":
        allowed = _parse(_AllowedTools, value, "tool_choice")
        _check_names([t.name for t in allowed.tools], client_tools, server_tools, "tool_choice.tools")
        return allowed.model_dump()
    raise invalid(
        f"Unsupported tool_choice type '{kind}': use 'none', 'auto', 'required', a function, or allowed_tools.",
        "tool_choice.type",
        "unsupported_value",
    )


def _check_names(names: list[str], client_tools: set[str], server_tools: set[str] | None, param: str) -> None:
    if server_tools is None:
        return  # no worker has published this agent yet: the worker's own check is what is left
    known = client_tools | server_tools
    for name in names:
        if name not in known:
            offered = ", ".join(sorted(known)) or "none"
            raise invalid(f"'{param}' names tool '{name}', which this request does not offer ({offered}).", param)


def text_config(value: dict[str, Any] | None) -> dict[str, Any]:
    text = _parse(_Text, value or {}, "text")
    fmt = text.format or {"type": "text"}
    kind = fmt.get("type")
    model = _FORMATS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise invalid(
            f"Unsupported text.format type '{kind}': use 'text', 'json_object' or 'json_schema'.",
            "text.format.type",
            "unsupported_value",
        )
    parsed = _parse(model, fmt, "text.format")
    echoed: dict[str, Any] = {"format": parsed.model_dump(by_alias=True)}
    if isinstance(parsed, _JsonSchemaFormat):
        echoed["format"]["strict"] = bool(parsed.strict)
    if text.verbosity is not None:
        echoed["verbosity"] = text.verbosity
    return echoed


def reasoning(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    parsed = _parse(_Reasoning, value, "reasoning")
    return {"effort": parsed.effort, "summary": parsed.summary or parsed.generate_summary}


class _Compaction(_Strict):
    type: Literal["compaction"]
    compact_threshold: int | None = Field(default=None, ge=1)


def compaction(entries: list[dict[str, Any]] | None) -> tuple[bool, int | None]:
    """`context_management`: whether the request asks for compaction, and past how many tokens."""
    asked, threshold = False, None
    for i, entry in enumerate(entries or []):
        if entry.get("type") != "compaction":
            raise invalid(
                f"Unsupported context_management type '{entry.get('type')}': only 'compaction'.",
                f"context_management[{i}].type",
                "unsupported_value",
            )
        parsed = _parse(_Compaction, entry, f"context_management[{i}]")
        asked, threshold = True, parsed.compact_threshold
    return asked, threshold


def include(values: list[str] | None) -> list[str]:
    for i, value in enumerate(values or []):
        if value not in INCLUDE_VALUES:
            raise invalid(f"Invalid value for 'include[{i}]': '{value}' is not a known include.", f"include[{i}]")
        if value == _NOT_CARRIED:
            raise invalid(
                f"'include[{i}]': output logprobs are not carried by this server yet.", f"include[{i}]",
                "unsupported_value",
            )
    return list(values or [])


def top_logprobs(value: int | None) -> int | None:
    if value:
        raise invalid("'top_logprobs' above 0: output logprobs are not carried by this server yet.", "top_logprobs",
                      "unsupported_value")
    return value
