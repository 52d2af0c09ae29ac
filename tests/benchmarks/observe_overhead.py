"""Per-chunk worker CPU with metrics and tracing off, metrics on, and metrics + tracing on, in one run.

Runs the worker's real agent loop (worker/agent_loop.py: the openai SDK's raw stream, orjson per chunk,
the event builders) over an in-memory upstream (httpx MockTransport serving a recorded Chat Completions
stream) and an emitter that drops events, so the figure is the worker's own CPU per chunk with no network,
Redis or model in it. The modes alternate round by round, so machine noise falls on all of them alike.

    .venv/bin/python tests/benchmarks/observe_overhead.py [--chunks 500] [--turns 20] [--rounds 7]

"off" is a telemetry object that does nothing (what the loop costs without instrumentation); "metrics" is
the real one with tracing off (the default); "metrics+tracing" adds OpenTelemetry spans through a
BatchSpanProcessor to an exporter that drops them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import httpx
from openai import AsyncOpenAI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from shared import events, ids, tracing
from shared.models import TurnRequest, Usage
from worker.agent_loop import AgentTurn, Limits
from worker.agents import Agent
from worker.turn_telemetry import ModelCall, TurnTelemetry


def recorded_stream(chunks: int) -> bytes:
    def line(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
        body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    parts = [line({"role": "assistant", "content": ""})]
    parts += [line({"content": f" word{i}"}) for i in range(chunks)]
    parts.append(line({}, "stop"))
    parts.append(line({}, usage={"prompt_tokens": 20, "completion_tokens": chunks, "total_tokens": 20 + chunks}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


class DroppingEmitter:
    async def emit(self, event: events.Event) -> None:
        pass

    async def flush(self) -> None:
        pass


class DroppingExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _NoCall(ModelCall):
    async def __aenter__(self) -> ModelCall:
        return self

    def first_chunk(self, chunk: dict[str, Any]) -> None:
        self.waiting = False

    def done(self, usage: Usage, finish_reason: str | None) -> None:
        pass

    async def __aexit__(self, *exc: object) -> None:
        pass


class NoTelemetry(TurnTelemetry):
    def agent(self, upstream_model: str) -> None:
        pass

    def output_started(self) -> None:
        pass

    def model_call(self) -> ModelCall:
        return _NoCall(self)


async def run_turns(client: AsyncOpenAI, agent: Agent, turns: int, telemetry: type[TurnTelemetry]) -> float:
    """CPU seconds for `turns` turns (process time: this is the only thing the process does)."""
    started = time.process_time()
    for _ in range(turns):
        req = TurnRequest(response_id=ids.response_id(), model="bench", input=[], traceparent=None)
        t = telemetry(req, 1)
        with t.attempt_span():
            turn = AgentTurn(req, agent, [], client, DroppingEmitter(), Limits(60, 10**9), telemetry=t)  # type: ignore[arg-type]
            outcome = await turn.run()
            t.ended(outcome)
        assert outcome.status == "completed"
    return time.process_time() - started


async def main(chunks: int, turns: int, rounds: int) -> None:
    body = recorded_stream(chunks)
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    )
    client = AsyncOpenAI(base_url="http://upstream/v1", api_key="k", http_client=httpx.AsyncClient(transport=transport))
    agent = Agent(name="bench", model="m")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    modes: dict[str, tuple[type[TurnTelemetry], Any]] = {
        "off": (NoTelemetry, None),
        "metrics": (TurnTelemetry, None),
        "metrics+tracing": (TurnTelemetry, provider),
    }
    await run_turns(client, agent, turns, TurnTelemetry)  # warm up imports, pools and caches
    per_chunk: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode, (telemetry, tracer_provider) in modes.items():
            tracing.use(tracer_provider)
            cpu = await run_turns(client, agent, turns, telemetry)
            per_chunk[mode].append(cpu / (turns * chunks) * 1e6)
    tracing.use(None)
    provider.shutdown()
    base = statistics.median(per_chunk["off"])
    print(f"{chunks} chunks per turn, {turns} turns per mode per round, {rounds} rounds (medians of rounds)")
    print(f"{'mode':<18}{'CPU µs/chunk':>14}{'vs off':>10}{'per turn µs':>14}")
    for mode, samples in per_chunk.items():
        median = statistics.median(samples)
        print(f"{mode:<18}{median:>14.2f}{median - base:>+10.2f}{(median - base) * chunks:>+14.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.chunks, args.turns, args.rounds))
