"""Server-side tools: plain Python functions the worker calls when the model asks for them.

`@tool` turns a function into a `Tool` whose JSON schema comes from the function's type hints.
`Tool.run` never raises for anything the tool or the model did wrong: every failure becomes an
error result the model can read and react to, so one bad tool call cannot fail a whole turn.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, PydanticUserError, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import to_json

__all__ = ["Tool", "ToolCall", "ToolResult", "ToolSet", "current_call", "tool"]

# The Chat Completions API rejects function names outside this pattern.
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Schema keywords whose values are data (or name maps) rather than sub-schemas.
_DATA_KEYS = frozenset({"default", "const", "enum", "examples"})
_NAME_MAP_KEYS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The call a tool is running for. `call_id` stays the same when a turn is re-run after its worker died,
    so a tool with side effects (send the email, charge the card) can use it as an idempotency key."""

    call_id: str
    response_id: str
    attempt: int


_current_call: contextvars.ContextVar[ToolCall | None] = contextvars.ContextVar("tool_call", default=None)


def current_call() -> ToolCall | None:
    """Inside a tool: the call being run (sync tools too: their thread inherits the context)."""
    return _current_call.get()


@dataclass(frozen=True, slots=True)
class ToolResult:
    output: str
    is_error: bool = False

    @classmethod
    def error(cls, message: str) -> ToolResult:
        # Structured so the model can tell a failure from a tool that legitimately returned text.
        return cls(output=json.dumps({"error": message}, ensure_ascii=False), is_error=True)


@dataclass(frozen=True, eq=False)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] = field(repr=False)
    timeout_s: float | None = None
    args_model: type[BaseModel] = field(repr=False, kw_only=True)
    # Positional-only parameters cannot be passed by keyword, so the call must know which they are.
    positional: tuple[str, ...] = field(default=(), repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {_NAME_RE.pattern}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"tool {self.name}: timeout_s must be positive, got {self.timeout_s}")

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> Tool:
        tool_name = name or fn.__name__
        model, positional = _args_model(fn, tool_name)
        try:
            schema = _strip_titles(model.model_json_schema())
        except PydanticUserError as exc:
            raise TypeError(f"cannot derive a JSON schema for tool {tool_name!r}: {exc}") from exc
        return cls(
            name=tool_name,
            description=_first_paragraph(fn) if description is None else description,
            parameters=schema,
            fn=fn,
            timeout_s=timeout_s,
            args_model=model,
            positional=positional,
        )

    def chat_schema(self) -> dict[str, Any]:
        """The Chat Completions `tools[]` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": copy.deepcopy(self.parameters),
            },
        }

    def response_tool(self) -> dict[str, Any]:
        """The Responses API `FunctionTool` shape, for listing tools back to clients."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": copy.deepcopy(self.parameters),
            "strict": False,
        }

    async def run(self, arguments: str, *, timeout_s: float, call: ToolCall | None = None) -> ToolResult:
        """Parse, validate and call; every failure short of cancellation becomes an error result."""
        token = _current_call.set(call)
        try:
            return await self._run(arguments, timeout_s)
        finally:
            _current_call.reset(token)

    async def _run(self, arguments: str, timeout_s: float) -> ToolResult:
        try:
            # Models commonly send "" rather than "{}" for a call that takes no arguments.
            raw = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolResult.error(f"invalid arguments for {self.name}: not valid JSON ({exc})")
        if not isinstance(raw, dict):
            kind = type(raw).__name__
            return ToolResult.error(f"arguments for {self.name} must be a JSON object, got {kind}")
        try:
            validated = self.args_model.model_validate(raw)
        except ValidationError as exc:
            return ToolResult.error(f"invalid arguments for {self.name}: {_describe(exc)}")

        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for field_name, info in self.args_model.model_fields.items():
            value = getattr(validated, field_name)
            if info.alias in self.positional:
                args.append(value)
            else:
                kwargs[info.alias or field_name] = value

        limit = self.timeout_s or timeout_s
        try:
            async with asyncio.timeout(limit) as deadline:
                if inspect.iscoroutinefunction(self.fn):
                    result = await self.fn(*args, **kwargs)
                else:
                    # A thread cannot be killed: on timeout it runs on, but its result is dropped.
                    result = await asyncio.to_thread(self.fn, *args, **kwargs)
        except TimeoutError as exc:
            if deadline.expired():
                return ToolResult.error(f"tool {self.name} timed out after {limit:g}s")
            return ToolResult.error(f"{self.name} raised {type(exc).__name__}: {exc}")
        except Exception as exc:
            return ToolResult.error(f"{self.name} raised {type(exc).__name__}: {exc}")

        try:
            return ToolResult(output=_serialise(result))
        except Exception as exc:
            return ToolResult.error(f"{self.name} returned an unserialisable {type(result).__name__}: {exc}")


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a `Tool` from a function: `@tool` or `@tool(name=..., description=..., timeout_s=...)`."""
    if fn is not None:
        return Tool.from_function(fn)

    def decorate(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description, timeout_s=timeout_s)

    return decorate


class ToolSet:
    """The tools one agent offers, looked up by the name the model calls."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            if not isinstance(t, Tool):
                raise TypeError(f"expected a Tool (decorate functions with @tool), got {t!r}")
            if t.name in self._tools:
                raise ValueError(f"duplicate tool name {t.name!r}")
            self._tools[t.name] = t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def chat_schemas(self) -> list[dict[str, Any]]:
        return [t.chat_schema() for t in self._tools.values()]

    def response_tools(self) -> list[dict[str, Any]]:
        return [t.response_tool() for t in self._tools.values()]

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __repr__(self) -> str:
        return f"ToolSet({self.names()!r})"


def _args_model(fn: Callable[..., Any], tool_name: str) -> tuple[type[BaseModel], tuple[str, ...]]:
    """A pydantic model with one field per parameter of `fn`.

    Fields are named a0, a1, ... and aliased to the real parameter names, so parameters called
    `schema`, `json` or `model_config` cannot collide with pydantic's own attributes.
    """
    try:
        hints = get_type_hints(fn, include_extras=True)
        signature = inspect.signature(fn)
    except (NameError, TypeError, ValueError) as exc:
        raise TypeError(f"cannot read the signature of tool {tool_name!r}: {exc}") from exc

    fields: dict[str, Any] = {}
    positional: list[str] = []
    for i, (pname, param) in enumerate(signature.parameters.items()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name!r}: *args/**kwargs cannot be described by a JSON schema")
        if param.kind is param.POSITIONAL_ONLY:
            positional.append(pname)
        annotation = hints.get(pname, Any)
        if isinstance(param.default, FieldInfo):
            default: Any = param.default
        elif param.default is param.empty:
            default = ...
        else:
            default = param.default
        fields[f"a{i}"] = (annotation, Field(default, alias=pname))

    config = ConfigDict(extra="forbid", protected_namespaces=())
    try:
        model = create_model(f"{tool_name}_arguments", __config__=config, **fields)
    except PydanticUserError as exc:
        raise TypeError(f"cannot derive a JSON schema for tool {tool_name!r}: {exc}") from exc
    return model, tuple(positional)


def _first_paragraph(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    paragraph = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's auto-generated `title`s, which only add tokens to every request."""
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _DATA_KEYS:
            out[key] = value
        elif key in _NAME_MAP_KEYS and isinstance(value, dict):
            out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _serialise(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"), ensure_ascii=False)
    # Handles nested models, dataclasses, datetimes and the like; anything else falls back to str().
    return to_json(value, fallback=str).decode()
