"""Agent profiles: which upstream model a public model name runs on, with what instructions and tools.

Profiles live in a Python module (a dotted path or a .py file) that defines `AGENTS`; the worker
loads it at start-up and publishes each agent's `card()` so API nodes never import worker code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from worker.tools import Tool, ToolSet
from worker.upstreams import Upstream

__all__ = ["Agent", "AgentRegistry", "Upstream", "load_agents"]


@dataclass(frozen=True)
class Agent:
    name: str
    model: str
    instructions: str = ""
    tools: tuple[Tool, ...] = ()
    max_tool_rounds: int = 8
    tool_timeout_s: float = 30.0
    max_output_tokens: int | None = None
    description: str = ""
    # The prompt size the upstream model takes, in estimated tokens; `truncation: "auto"` windows history to it.
    context_budget_tokens: int = 128_000
    # What a request that does not say gets: "disabled" (OpenAI's default) sends the whole history.
    truncation: Literal["auto", "disabled"] = "disabled"
    # History past this many estimated tokens is summarised into a compaction item (None: never).
    compact_threshold_tokens: int | None = None
    # Further upstreams, tried in order when the worker's own fails past its share of retries or cools down.
    fallbacks: tuple[Upstream, ...] = ()
    # This agent's retry budget per turn, in seconds (None: TURNSTREAM_UPSTREAM_RETRY_BUDGET_S).
    retry_budget_s: float | None = None
    toolset: ToolSet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("agent name must be non-empty")
        where = f"agent {self.name!r}"
        if not self.model or not self.model.strip():
            raise ValueError(f"{where}: model must be non-empty")
        if self.max_tool_rounds < 1:
            raise ValueError(f"{where}: max_tool_rounds must be >= 1, got {self.max_tool_rounds}")
        if not self.tool_timeout_s > 0:
            raise ValueError(f"{where}: tool_timeout_s must be positive, got {self.tool_timeout_s}")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ValueError(f"{where}: max_output_tokens must be >= 1, got {self.max_output_tokens}")
        if self.context_budget_tokens < 1:
            raise ValueError(f"{where}: context_budget_tokens must be >= 1, got {self.context_budget_tokens}")
        if self.compact_threshold_tokens is not None and self.compact_threshold_tokens < 1:
            raise ValueError(f"{where}: compact_threshold_tokens must be >= 1, got {self.compact_threshold_tokens}")
        if self.truncation not in ("auto", "disabled"):
            raise ValueError(f"{where}: truncation must be 'auto' or 'disabled', got {self.truncation!r}")
        if self.retry_budget_s is not None and not self.retry_budget_s > 0:
            raise ValueError(f"{where}: retry_budget_s must be positive, got {self.retry_budget_s}")
        fallbacks = tuple(self.fallbacks)
        for upstream in fallbacks:
            if not isinstance(upstream, Upstream):
                raise ValueError(f"{where}: fallbacks must be Upstream(...) entries, got {upstream!r}")
        object.__setattr__(self, "fallbacks", fallbacks)
        # A list is an easy slip in a profile module; a tuple keeps the frozen agent truly immutable.
        tools = tuple(self.tools)
        try:
            toolset = ToolSet(tools)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc
        object.__setattr__(self, "tools", tools)
        object.__setattr__(self, "toolset", toolset)

    def card(self) -> dict[str, Any]:
        """What API nodes need to list and validate models, as plain JSON-serialisable data."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "tools": self.toolset.names(),
            "max_tool_rounds": self.max_tool_rounds,
            "tool_timeout_s": self.tool_timeout_s,
            "context_budget_tokens": self.context_budget_tokens,
            "truncation": self.truncation,
        }


class AgentRegistry:
    """Agents by name; the first one is the default."""

    def __init__(self, agents: Iterable[Agent]) -> None:
        self._agents: dict[str, Agent] = {}
        for agent in agents:
            if not isinstance(agent, Agent):
                raise ValueError(f"expected an Agent, got {agent!r}")
            if agent.name in self._agents:
                raise ValueError(f"duplicate agent name {agent.name!r}")
            self._agents[agent.name] = agent
        if not self._agents:
            raise ValueError("an agent registry needs at least one agent")

    def get(self, name: str) -> Agent | None:
        return self._agents.get(name)

    def all(self) -> list[Agent]:
        return list(self._agents.values())

    def default(self) -> Agent:
        return next(iter(self._agents.values()))

    def cards(self) -> list[dict[str, Any]]:
        return [agent.card() for agent in self._agents.values()]

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[Agent]:
        return iter(self._agents.values())

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __repr__(self) -> str:
        return f"AgentRegistry({list(self._agents)!r})"


def load_agents(spec: str) -> AgentRegistry:
    """Load `AGENTS` from a dotted module path (`mypkg.agents`) or a `.py` file path."""
    spec = spec.strip()
    if not spec:
        raise ValueError("agents spec is empty; expected a module path or a .py file")
    module = _import_file(spec) if _looks_like_path(spec) else _import_module(spec)

    agents = getattr(module, "AGENTS", None)
    if agents is None:
        raise ValueError(f"agents spec {spec!r} does not define AGENTS")
    if not isinstance(agents, list | tuple):
        raise ValueError(f"agents spec {spec!r}: AGENTS must be a list of Agent, got {type(agents).__name__}")
    for i, agent in enumerate(agents):
        if not isinstance(agent, Agent):
            raise ValueError(f"agents spec {spec!r}: AGENTS[{i}] is a {type(agent).__name__}, not an Agent")
    try:
        return AgentRegistry(agents)
    except ValueError as exc:
        raise ValueError(f"agents spec {spec!r}: {exc}") from exc


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _import_module(spec: str) -> ModuleType:
    # A console script's sys.path starts at its own bin/ directory, not at the working directory where
    # `python -m` and uvicorn look first; `TURNSTREAM_AGENTS=myagents` means the myagents.py right here.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (spec == exc.name or spec.startswith(exc.name + ".")):
            file = spec.replace(".", "/") + ".py"
            raise ImportError(
                f"no module {spec!r} in the working directory ({cwd}) or on the Python path; run from the "
                f"directory that holds {file}, or name the file itself (TURNSTREAM_AGENTS=/path/to/{file})"
            ) from exc
        raise ImportError(f"cannot import agents module {spec!r}: {exc}") from exc
    except Exception as exc:
        raise ImportError(f"cannot import agents module {spec!r}: {exc}") from exc


def _import_file(spec: str) -> ModuleType:
    path = Path(spec).expanduser().resolve()
    if not path.is_file():
        raise ImportError(f"agents file {spec!r} not found")
    # A name derived from the path keeps two profile files with the same stem from clashing.
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:12]
    name = f"_turnstream_agents_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load agents file {spec!r}")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before execution so pydantic and dataclasses can resolve the module's own names.
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ImportError(f"cannot import agents file {spec!r}: {exc}") from exc
    return module
