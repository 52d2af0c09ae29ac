"""Agent profiles the integration tests point their workers at (TURNSTREAM_AGENTS)."""

from __future__ import annotations

import asyncio
import os

from worker.agents import Agent, Upstream
from worker.default_agents import get_time, get_weather
from worker.tools import current_call, tool


@tool
async def slow_tool(seconds: float) -> str:
    """Waits, then reports how long it waited."""
    await asyncio.sleep(seconds)
    return f"waited {seconds}s"


@tool
def broken_tool(reason: str) -> str:
    """Always fails, so the error path runs."""
    raise RuntimeError(reason)


@tool(timeout_s=0.5)
async def stuck_tool() -> str:
    """Never answers within its 0.5 s timeout."""
    await asyncio.sleep(30)
    return "unreachable"


@tool
def echo_tool(text: str) -> str:
    """Returns its input."""
    return text


@tool
def record_call(words: int) -> str:
    """Appends its call id to the file named by TURNSTREAM_TEST_TOOL_LOG, so tests can count executions."""
    call = current_call()
    with open(os.environ["TURNSTREAM_TEST_TOOL_LOG"], "a") as log:
        log.write(f"{call.call_id if call else '-'}\n")
    return " ".join(["recorded"] * words)


AGENTS = [
    Agent(
        name="turnstream-mock",
        model="turnstream-mock",
        instructions="You are a helpful assistant.",
        tools=(get_weather, get_time, slow_tool, broken_tool, stuck_tool, echo_tool, record_call),
        max_tool_rounds=3,
        tool_timeout_s=5.0,
    ),
    Agent(name="plain", model="turnstream-mock", instructions="Answer briefly."),
    # A tiny context budget, so a few turns of history already have to be windowed.
    Agent(
        name="windowed",
        model="turnstream-mock",
        instructions="Answer briefly.",
        tools=(get_weather,),
        context_budget_tokens=400,
        truncation="auto",
    ),
    # Compacts history past 600 tokens, well inside its 1500-token budget.
    Agent(
        name="compacting",
        model="turnstream-mock",
        instructions="Answer briefly.",
        context_budget_tokens=1500,
        compact_threshold_tokens=600,
        truncation="auto",
    ),
    # Gives up on a failing upstream after two seconds of retries.
    Agent(name="impatient", model="turnstream-mock", instructions="Answer briefly.", retry_budget_s=2.0),
    # Falls back to the upstream at TURNSTREAM_TEST_FALLBACK_URL (the tests' mock) when its own fails.
    Agent(
        name="with-fallback",
        model="turnstream-mock",
        instructions="Answer briefly.",
        fallbacks=(
            Upstream(
                os.environ.get("TURNSTREAM_TEST_FALLBACK_URL", "http://127.0.0.1:9/v1"), "turnstream-mock", name="spare"
            ),
        ),
    ),
]
