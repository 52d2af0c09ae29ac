"""Agent-loop benchmark: a 20-tool-call client loop over SSE (one POST per turn) vs one WebSocket.

Each loop is what an agent framework does with a client-side function tool: ask, get a `function_call`,
run the tool (instantly here), send its `function_call_output` chained by `previous_response_id`, and
repeat until 20 calls have been made, then one last turn answers. That is 21 turns per loop. Modes:

    sse-sdk   the openai SDK's responses.create(stream=True) per turn (what most clients run)
    sse-raw   httpx POST per turn, SSE lines parsed by hand with json.loads (no SDK models)
    ws        one WebSocket for the whole loop, response.create per turn, json.loads per event

With --parallel N, N loops run at once in each mode: the SSE modes share one client (its connection
pool), and each WebSocket loop opens a socket of its own, the socket-per-run pattern a socket's one
response at a time calls for. Figures are per turn of one loop, so they include the loops' contention.

Loops alternate between modes so machine noise hits each alike. The mock model runs with no token delay,
so a turn's time is turnstream's own overhead (enqueue, pickup, stream) plus the transport's.

    .venv/bin/python tests/benchmarks/websocket_vs_sse.py [--loops 8] [--calls 20] [--parallel 1]
        [--token-delay-ms 0]

Not a pytest test: its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import Stack, _terminate  # a sibling script: run this one from anywhere, by path

MODEL = "turnstream-mock"
TOOL = {"type": "function", "name": "lookup_order", "description": "Look up an order.",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}
TERMINAL = ("response.completed", "response.failed", "response.incomplete")
Json = dict[str, Any]
# One turn: send this create body, return the final Response.
TurnFn = Callable[[Json], Awaitable[Json]]


def _first_body(calls: int) -> Json:
    return {"model": MODEL, "tools": [TOOL], "input": _ask(1, calls)}


def _ask(n: int, calls: int) -> str:
    return f'call lookup_order({{"id": "{n}"}})' if n <= calls else "thanks"


async def agent_loop(turn: TurnFn, calls: int) -> float:
    """Runs one loop; returns its wall time in seconds."""
    started = time.perf_counter()
    response = await turn(_first_body(calls))
    for n in range(1, calls + 1):
        call = response["output"][-1]
        assert call["type"] == "function_call", f"turn {n} ended with {call['type']}: {response['status']}"
        result = {"type": "function_call_output", "call_id": call["call_id"], "output": f"order {n} shipped"}
        response = await turn(
            {"model": MODEL, "tools": [TOOL], "previous_response_id": response["id"],
             "input": [result, {"role": "user", "content": _ask(n + 1, calls)}]}
        )
    assert response["output"][-1]["type"] == "message", response["output"][-1]
    return time.perf_counter() - started


def sse_sdk(client: openai.AsyncOpenAI) -> TurnFn:
    async def turn(body: Json) -> Json:
        stream = await client.responses.create(stream=True, **body)
        async for event in stream:
            if event.type in TERMINAL:
                final: Json = event.response.to_dict()
        return final

    return turn


def sse_raw(http: httpx.AsyncClient) -> TurnFn:
    async def turn(body: Json) -> Json:
        async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if event["type"] in TERMINAL:
                        final: Json = event["response"]
        return final

    return turn


def websocket(ws: ClientConnection) -> TurnFn:
    async def turn(body: Json) -> Json:
        await ws.send(json.dumps({"type": "response.create", **body}))
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "error":
                raise RuntimeError(f"websocket error: {event['error']}")
            if event["type"] in TERMINAL:
                final: Json = event["response"]
                return final

    return turn


async def benchmark(stack: Stack, args: argparse.Namespace) -> dict[str, list[float]]:
    stack.start()
    await stack.wait_ready()
    base = stack.api_url
    per_turn: dict[str, list[float]] = {"sse-sdk": [], "sse-raw": [], "ws": []}
    async with (
        openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as client,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
        contextlib.AsyncExitStack() as sockets,
    ):
        url = base.replace("http://", "ws://") + "/v1/responses"
        runs = [await sockets.enter_async_context(connect(url)) for _ in range(args.parallel)]
        modes: dict[str, list[TurnFn]] = {
            "sse-sdk": [sse_sdk(client)] * args.parallel,
            "sse-raw": [sse_raw(http)] * args.parallel,
            "ws": [websocket(ws) for ws in runs],  # a socket per run
        }
        for turns in modes.values():  # warm-up: connections, imports, caches
            await asyncio.gather(*(agent_loop(turn, 2) for turn in turns))
        for _ in range(args.loops):
            for mode, turns in modes.items():
                seconds = await asyncio.gather(*(agent_loop(turn, args.calls) for turn in turns))
                per_turn[mode] += [s * 1000 / (args.calls + 1) for s in seconds]
    return per_turn


def report(per_turn: dict[str, list[float]], args: argparse.Namespace) -> None:
    print(f"{args.calls}-tool-call client loop ({args.calls + 1} turns), {args.loops} x {args.parallel} loops per "
          f"mode ({args.parallel} at once), mock token delay {args.token_delay_ms:g} ms, {args.workers} worker(s)")
    print(f"{'mode':<9} {'ms/turn p50':>12} {'min':>8} {'max':>8} {'loop p50 (ms)':>14}")
    for mode, values in per_turn.items():
        p50 = statistics.median(values)
        print(f"{mode:<9} {p50:>12.2f} {min(values):>8.2f} {max(values):>8.2f} {p50 * (args.calls + 1):>14.0f}")
    ws, sdk, raw = (statistics.median(per_turn[m]) for m in ("ws", "sse-sdk", "sse-raw"))
    print(f"per turn, WebSocket saves {sdk - ws:.2f} ms ({(sdk - ws) / sdk:.0%}) against the SDK over SSE "
          f"and {raw - ws:.2f} ms ({(raw - ws) / raw:.0%}) against raw SSE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=8, help="timed loops per mode")
    parser.add_argument("--calls", type=int, default=20, help="tool calls per loop")
    parser.add_argument("--parallel", type=int, default=1, help="loops at once per mode (a socket each)")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="mock model delay before each token")
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1, help="worker processes")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    stack = Stack(token_delay_ms=args.token_delay_ms, workers=args.workers, poll_only=False)
    try:
        per_turn = asyncio.run(benchmark(stack, args))
    except KeyboardInterrupt:
        return 130
    finally:
        stack.stop()
    report(per_turn, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
