"""Metrics and spans of one turn attempt, with every label bound once when the attempt starts.

The per-chunk path pays for none of it: a model call notes its first chunk (one attribute check per
chunk) and everything else (tokens, time per token, spans' attributes) is recorded once per call, per
tool and per attempt.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import openai

from shared import metrics, tracing
from shared.models import TurnOutcome, TurnRequest, Usage
from worker.tools import Tool, ToolCall, ToolResult

_PROVIDER = "openai"  # the wire protocol upstream speaks: OpenAI-compatible Chat Completions


class TurnTelemetry:
    def __init__(self, req: TurnRequest, attempt: int, *, resumed: bool = False, rerun: bool | None = None) -> None:
        self.req = req
        self.attempt = attempt
        # An attempt after a wait for the upstream on the queue is no re-run: its previous one did not die.
        self.rerun = attempt > 1 if rerun is None else rerun
        self.project = req.project
        self.span: tracing.AnySpan = tracing.NO_SPAN
        self.upstream_model = req.model
        # A re-run that continues streamed output has had its first token already.
        self._first_output_pending = not resumed
        self._ttft = metrics.TIME_TO_FIRST_TOKEN.labels(req.model, self.project)
        self.tpot = metrics.TIME_PER_OUTPUT_TOKEN.labels(req.model, self.project)
        self._bind_upstream(req.model)

    def _bind_upstream(self, model: str) -> None:
        self.upstream_model = model
        self.tokens_in = metrics.TOKEN_USAGE.labels("input", model, self.project)
        self.tokens_out = metrics.TOKEN_USAGE.labels("output", model, self.project)
        self.call_ok = metrics.OPERATION_DURATION.labels(model, "")

    @contextlib.contextmanager
    def attempt_span(self) -> Iterator[TurnTelemetry]:
        """The attempt's `invoke_agent` span, a child of the API request that accepted the turn."""
        req = self.req
        if self.rerun:
            metrics.TURN_RERUNS.labels(req.model, self.project).inc()
        self.span = tracing.start_span(
            f"invoke_agent {req.model}",
            parent=req.traceparent,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": req.model,
                "gen_ai.request.model": req.model,
                "gen_ai.conversation.id": req.conversation_id,
                "gen_ai.response.id": req.response_id,
                "turnstream.attempt": self.attempt,
                "turnstream.project": self.project,
            },
        )
        try:
            yield self
        except BaseException as exc:
            self.span.fail(type(exc).__qualname__)
            raise
        finally:
            self.span.end()

    def agent(self, upstream_model: str) -> None:
        """The agent profile is known: upstream figures are labelled with the model it calls."""
        if upstream_model != self.upstream_model:
            self._bind_upstream(upstream_model)

    def ended(self, outcome: TurnOutcome) -> None:
        self.span.set_attribute("turnstream.status", outcome.status.value)
        if outcome.usage is not None:
            self.span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": outcome.usage.input_tokens,
                    "gen_ai.usage.output_tokens": outcome.usage.output_tokens,
                }
            )
        if outcome.error:
            self.span.fail(outcome.error.get("code", "error"), outcome.error.get("message", ""))

    def output_started(self) -> None:
        """The turn streams its first output: the server-side time to first token ends here."""
        if self._first_output_pending:
            self._first_output_pending = False
            self._ttft.observe(max(0.0, time.time() - self.req.accepted_at_ms / 1000))

    def model_call(self, upstream: str | None = None) -> ModelCall:
        """`upstream` names the endpoint called (worker/upstreams.py), when the turn may use several."""
        return ModelCall(self, upstream)

    async def run_tool(self, tool: Tool, arguments: str, *, timeout_s: float, call: ToolCall) -> ToolResult:
        """Runs a server tool inside its `execute_tool` span (current, so the tool's own spans nest under it)."""
        span = tracing.start_span(
            f"execute_tool {tool.name}",
            parent=self.span,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool.name,
                "gen_ai.tool.call.id": call.call_id,
                "gen_ai.tool.type": "function",
            },
        )
        started = time.perf_counter()
        try:
            with tracing.current(span):
                result = await tool.run(arguments, timeout_s=timeout_s, call=call)
        except BaseException as exc:
            span.fail(type(exc).__qualname__)
            raise
        finally:
            metrics.TOOL_DURATION.labels(tool.name).observe(time.perf_counter() - started)
            metrics.TOOL_CALLS.labels(tool.name).inc()
            span.end()
        if result.is_error:
            metrics.TOOL_ERRORS.labels(tool.name).inc()
            span.fail("tool_error")
        return result


class ModelCall:
    """One streamed upstream call: its `chat` span, duration, tokens and errors."""

    waiting = True  # for the first chunk; the agent loop checks this per chunk and nothing else

    def __init__(self, turn: TurnTelemetry, upstream: str | None = None) -> None:
        self.turn = turn
        self.upstream = upstream
        self.started = time.perf_counter()
        self.first_at = 0.0
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.span: tracing.AnySpan = tracing.NO_SPAN

    async def __aenter__(self) -> ModelCall:
        turn = self.turn
        self.span = tracing.start_span(
            f"chat {turn.upstream_model}",
            kind="client",
            parent=turn.span,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": _PROVIDER,
                "gen_ai.request.model": turn.upstream_model,
                "gen_ai.conversation.id": turn.req.conversation_id,
                "turnstream.upstream": self.upstream,
            },
        )
        return self

    def first_chunk(self, chunk: dict[str, Any]) -> None:
        self.waiting = False
        self.first_at = time.perf_counter()
        self.response_id = chunk.get("id")
        self.response_model = chunk.get("model")

    def done(self, usage: Usage, finish_reason: str | None) -> None:
        """The stream ended normally (the call's own `finish_reason`, or a stop on the output budget)."""
        turn = self.turn
        ended = time.perf_counter()
        turn.tokens_in.observe(usage.input_tokens)
        turn.tokens_out.observe(usage.output_tokens)
        if usage.output_tokens > 1 and self.first_at:
            turn.tpot.observe((ended - self.first_at) / (usage.output_tokens - 1))
        self.span.set_attributes(
            {
                "gen_ai.response.id": self.response_id,
                "gen_ai.response.model": self.response_model,
                "gen_ai.response.finish_reasons": [finish_reason] if finish_reason else None,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
            }
        )

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        elapsed = time.perf_counter() - self.started
        if exc is None:
            self.turn.call_ok.observe(elapsed)
        else:
            error = _upstream_error(exc)
            if error is not None:
                metrics.OPERATION_DURATION.labels(self.turn.upstream_model, error).observe(elapsed)
                metrics.UPSTREAM_ERRORS.labels(error).inc()
            self.span.fail(error or type(exc).__qualname__, str(exc))
        self.span.end()


def _upstream_error(exc: BaseException) -> str | None:
    """How an upstream call failed, as a bounded label; None when the upstream is not to blame."""
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code)
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIError):
        return "stream"
    return None  # cancelled, or Redis away while emitting: not the upstream's doing
