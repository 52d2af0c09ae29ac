"""`make bench`: every performance target of the service measured in one run, each printed beside its target.

Sections (each reuses the script that measures it on its own):
  1. worker CPU per upstream chunk vs a bare `openai` SDK loop, back to back and at 20 ms (worker_cpu.py);
  2. on one stack (own Redis, 2 workers, 1 API, a raw SSE upstream from worker_cpu.py, not the mock):
     Redis round trips per turn by phase, added time to first token at 1 turn and beside 50 streaming turns,
     service CPU per short turn at a 50-turn burst, a short turn beside 300 long ones vs beside 2;
  3. Redis commands per poll with 2 and 300 running jobs (the real claim script, on a quiet Redis);
  4. SSE fan-out: 2,000 tails on one API process at 10k deliveries/s (fanout.py);
  5. Redis memory per finished short turn and 200-word streamed turn, stored compact and as streamed
     (memory_per_turn.py).

    .venv/bin/python tests/benchmarks/bench.py [--quick] [--skip cpu fanout ...]

Not a pytest test: it takes minutes and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fanout
import httpx
import latency
import memory_per_turn
import openai
import redis.asyncio as aioredis
import uvloop
import worker_cpu
from arq.connections import ArqRedis

from shared import keys, lua
from shared.queue import RUN_TURN
from worker.job_leases import JobLeases

SHORT = "chunks=5 spacing=0"  # a short turn: five chunks back to back
SECTIONS = ("cpu", "stack", "poll", "fanout", "memory")

# Runs a service with a send hook on redis-py's connections: SIGUSR2 starts recording every round trip
# (one send_packed_command: a command or a whole pipeline), the next SIGUSR2 writes them to the file.
_PROBED = r'''
import json, os, signal, sys, time
from redis.asyncio import connection
log_path, role = sys.argv[1].replace("{pid}", str(os.getpid())), sys.argv[2]
del sys.argv[1:]
trace = None
send = connection.AbstractConnection.send_packed_command
KEYED = {"LRANGE", "GET", "SET", "PEXPIRE", "BLPOP"}  # named with their key, to tell the workers' own loops apart

def names(packed):
    out, i = [], 0
    while packed[i:i + 1] == b"*":
        j = packed.index(b"\r\n", i)
        n, i, args = int(packed[i + 1:j]), j + 2, []
        for _ in range(n):
            j = packed.index(b"\r\n", i)
            size, i = int(packed[i + 1:j]), j + 2
            args.append(packed[i:i + size])
            i += size + 2
        name = args[0].decode().upper()
        if name == "EVALSHA":
            name += ":" + args[1].decode()[:12]
        elif name in KEYED:
            name += " " + args[1].decode()[:40]
        out.append(name)
    return out

async def counted(self, command, check_health=True):
    if trace is not None:
        packed = command if isinstance(command, bytes) else b"".join(bytes(c) for c in command)
        trace.append((time.monotonic_ns(), packed))
    await send(self, command, check_health)

def toggle(signum, frame):
    global trace
    if trace is None:
        trace = []
        return
    rows, trace = trace, None
    with open(log_path + ".tmp", "w") as out:
        for t, packed in rows:
            out.write(json.dumps({"t": t, "cmds": names(packed), "delta": b"output_text.delta" in packed}) + "\n")
    os.replace(log_path + ".tmp", log_path)

connection.AbstractConnection.send_packed_command = counted
signal.signal(signal.SIGUSR2, toggle)
from shared.cli import main
main([role])
'''


@dataclass
class Figure:
    name: str
    value: str
    target: str
    met: bool | None  # None: shown for context, no target of its own


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="turnstream-judge-")))
    figures: list[Figure] = field(default_factory=list)

    def figure(self, name: str, value: str, target: str = "", met: bool | None = None) -> None:
        self.figures.append(Figure(name, value, target, met))

    def launcher(self, role: str) -> list[str]:
        return [sys.executable, "-c", _PROBED, str(self.workdir / f"trace-{role}-{{pid}}"), role]


def ms(values: list[float], pct: float) -> float:
    return latency.percentile(values, pct)


def say(text: str) -> None:
    print(text, flush=True)


# --- 1. worker CPU per chunk ----------------------------------------------------------------------------------


def cpu_section(bench: Bench) -> None:
    a = bench.args
    say(f"\n== worker CPU per upstream chunk: {a.cpu_turns} turns x {a.cpu_chunks} chunks, 10 at a time, "
        f"median of {a.cpu_repeats} interleaved runs")
    results = worker_cpu.measure(a.cpu_turns, a.cpu_chunks, 10, a.cpu_repeats)
    worker_cpu.print_table(results)
    for r in results:
        label = "back to back" if r.spacing_ms == 0 else f"at {r.spacing_ms:g} ms spacing"
        bench.figure(f"worker CPU per chunk / bare SDK, {label}", f"{r.ratio:.2f}x", f"<= {r.target_ratio}x",
                     r.ratio <= r.target_ratio)


# --- 2. the stack --------------------------------------------------------------------------------------------


def sdk_client(stack: latency.Stack) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpxClient(  # the SDK's own HTTP client library, as latency.py builds it
        limits=latency.httpx2.Limits(max_connections=500, max_keepalive_connections=500),
        timeout=latency.httpx2.Timeout(latency.TURN_TIMEOUT_S, connect=5.0),
    )
    return openai.AsyncOpenAI(base_url=f"{stack.api_url}/v1", api_key="bench", max_retries=0, http_client=http)


async def upstream_first_token_ms(base: str, count: int) -> tuple[list[float], list[float]]:
    """The upstream's own POST -> first content chunk, as a plain HTTP client and as the openai SDK see it."""
    body = {"model": "bench", "messages": [{"role": "user", "content": SHORT}], "stream": True}
    plain, sdk = [], []
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        client = openai.AsyncOpenAI(base_url=base, api_key="bench", max_retries=0)
        for _ in range(count):
            t0 = time.perf_counter()
            async with http.stream("POST", "/chat/completions", json=body) as reply:
                async for line in reply.aiter_lines():
                    if '"content":"t0' in line:
                        plain.append((time.perf_counter() - t0) * 1000)
                        break
            t0 = time.perf_counter()
            stream = await client.chat.completions.create(model="bench", messages=body["messages"], stream=True)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    sdk.append((time.perf_counter() - t0) * 1000)
                    break
            await stream.close()
        await client.close()
    return plain, sdk


async def plain_first_delta_ms(http: httpx.AsyncClient, url: str, count: int) -> list[float]:
    """POST stream=true -> first output_text.delta, read by a plain HTTP client."""
    body = {"model": latency.MODEL, "input": SHORT, "stream": True}
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        first = None
        async with http.stream("POST", f"{url}/v1/responses", json=body) as reply:
            async for line in reply.aiter_lines():  # read to its end, as a client would let the turn run
                if first is None and line == "event: response.output_text.delta":
                    first = (time.perf_counter() - t0) * 1000
        if first is None:
            raise RuntimeError("a turn streamed no output_text.delta")
        out.append(first)
    return out


async def sequential_turns(client: openai.AsyncOpenAI, count: int, prompt: str = SHORT) -> list[latency.Turn]:
    turns = [await latency.one_turn(client, prompt) for _ in range(count)]
    failed = [t.error for t in turns if t.error]
    if failed:
        raise RuntimeError(f"{len(failed)} of {count} turns failed, e.g. {failed[0]}")
    return turns


async def first_token_section(bench: Bench, stack: latency.Stack, client: openai.AsyncOpenAI, upstream: str) -> None:
    """Added time: the service's POST -> first delta minus the upstream's own, each read by the same kind of
    client (a client's own cost per request and event is not the service's). The plain HTTP client is the
    judged figure; the openai SDK on both sides is shown beside it."""
    a = bench.args
    own, own_sdk = await upstream_first_token_ms(upstream, a.turns)
    own_p50, own_sdk_p50 = ms(own, 50), ms(own_sdk, 50)
    say(f"\n== added time to first token (POST stream=true -> first output_text.delta) minus the upstream's own "
        f"first-token time, each read by the same client: plain HTTP (upstream p50 {own_p50:.2f} ms, "
        f"p99 {ms(own, 99):.2f}), openai SDK (upstream p50 {own_sdk_p50:.2f} ms)")
    async with httpx.AsyncClient(timeout=30) as plain_http:
        await plain_first_delta_ms(plain_http, stack.api_url, 10)  # warm-up
        await sequential_turns(client, 10)
        alone = [t - own_p50 for t in await plain_first_delta_ms(plain_http, stack.api_url, a.turns)]
        alone_sdk = [t.first_delta_ms - own_sdk_p50 for t in await sequential_turns(client, a.turns)
                     if t.first_delta_ms]

        stop = asyncio.Event()

        async def steady_lane(http: httpx.AsyncClient) -> None:
            body = {"model": latency.MODEL, "input": "chunks=100 spacing=20", "stream": True}
            while not stop.is_set():
                async with http.stream("POST", f"{stack.api_url}/v1/responses", json=body) as reply:
                    async for _ in reply.aiter_raw():
                        pass

        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as http:
            lanes = [asyncio.create_task(steady_lane(http)) for _ in range(50)]
            await asyncio.sleep(3)  # every lane streaming
            half = a.turns // 2
            beside = [t - own_p50 for t in await plain_first_delta_ms(plain_http, stack.api_url, half)]
            beside_sdk = [t.first_delta_ms - own_sdk_p50 for t in await sequential_turns(client, half)
                          if t.first_delta_ms]
            stop.set()
            await asyncio.gather(*lanes)
    say(f"{'':<28} {'p50':>8} {'p99':>8}   target p50 / p99     openai SDK on both sides: p50 / p99")
    for label, values, sdk_values, target in (
        ("1 turn", alone, alone_sdk, (5.0, 15.0)),
        ("beside 50 streaming", beside, beside_sdk, (10.0, 30.0)),
    ):
        p50, p99 = ms(values, 50), ms(values, 99)
        say(f"{label:<28} {p50:>6.1f}ms {p99:>6.1f}ms   <= {target[0]:g} / {target[1]:g} ms  (n={len(values)})"
            f"   {ms(sdk_values, 50):.1f} / {ms(sdk_values, 99):.1f} ms")
        bench.figure(f"added first token, {label}, p50 / p99", f"{p50:.1f} / {p99:.1f} ms",
                     f"<= {target[0]:g} / {target[1]:g} ms", p50 <= target[0] and p99 <= target[1])


def process_cpu(pids: list[int]) -> float:
    return sum(worker_cpu.cpu_seconds(pid) for pid in pids)


async def burst_cpu_section(bench: Bench, stack: latency.Stack, client: openai.AsyncOpenAI) -> None:
    pids = [p.popen.pid for p in stack.procs]  # Redis, workers and the API (the upstream runs elsewhere)
    bursts = bench.args.bursts
    await asyncio.gather(*(latency.one_turn(client, SHORT) for _ in range(50)))  # warm-up
    before = process_cpu(pids)
    for _ in range(bursts):
        turns = await asyncio.gather(*(latency.one_turn(client, SHORT) for _ in range(50)))
        if any(t.error for t in turns):
            raise RuntimeError(f"burst turn failed: {next(t.error for t in turns if t.error)}")
    per_turn = (process_cpu(pids) - before) / (50 * bursts) * 1000
    say(f"\n== service CPU per short turn (API + 2 workers + Redis, /proc/<pid>/stat), {bursts} bursts of 50: "
        f"{per_turn:.2f} ms   target <= 6 ms")
    bench.figure("service CPU per short turn, 50-turn burst", f"{per_turn:.2f} ms", "<= 6 ms", per_turn <= 6)


async def start_long_turns(http: httpx.AsyncClient, count: int) -> list[str]:
    body = {"model": latency.MODEL, "input": "chunks=1000 spacing=200", "background": True}
    replies = await asyncio.gather(*(http.post("/v1/responses", json=body) for _ in range(count)))
    return [r.raise_for_status().json()["id"] for r in replies]


async def statuses(redis: aioredis.Redis, ids: list[str]) -> list[str]:
    pipe = redis.pipeline(transaction=False)
    for rid in ids:
        pipe.hget(keys.response(rid), "status")
    return [(s or b"").decode() for s in await pipe.execute()]


async def until_all(redis: aioredis.Redis, ids: list[str], done: Callable[[str], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not all(done(s) for s in await statuses(redis, ids)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def crowd_section(bench: Bench, stack: latency.Stack, client: openai.AsyncOpenAI) -> None:
    redis = aioredis.Redis(port=stack.redis_port)
    totals: dict[int, list[float]] = {}
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:
            for running in (2, bench.args.long_turns):
                ids = await start_long_turns(http, running)
                await until_all(redis, ids, lambda s: s == "in_progress", f"{running} long turns to start")
                turns = await sequential_turns(client, bench.args.crowd_samples)
                totals[running] = [t.total_ms for t in turns if t.total_ms is not None]
                await asyncio.gather(*(http.post(f"/v1/responses/{rid}/cancel") for rid in ids))
                await until_all(redis, ids, lambda s: s not in ("queued", "in_progress"), "long turns to stop")
    finally:
        await redis.aclose()
    few, many = 2, bench.args.long_turns
    p_few, p_many = ms(totals[few], 50), ms(totals[many], 50)
    ratio = p_many / p_few
    say(f"\n== short turn, POST -> response.completed, beside long turns (n={bench.args.crowd_samples} each)")
    say(f"beside {few:>3} running: p50 {p_few:6.1f} ms  p99 {ms(totals[few], 99):6.1f} ms")
    say(f"beside {many:>3} running: p50 {p_many:6.1f} ms  p99 {ms(totals[many], 99):6.1f} ms   "
        f"ratio {ratio:.2f}  target <= 1.20")
    bench.figure(f"short turn beside {many} / beside {few} long, p50", f"{ratio:.2f}x ({p_many:.0f} / {p_few:.0f} ms)",
                 "<= 1.20x", ratio <= 1.2)


# --- round trips by phase ---


async def traced(
    stack: latency.Stack, bench: Bench, body: Callable[[], Awaitable[None]]
) -> dict[str, list[dict[str, Any]]]:
    """Runs `body` with every service process recording its round trips; returns them per process name."""
    services = [p for p in stack.procs if p.name == "api" or p.name.startswith("worker")]
    for proc in services:
        proc.popen.send_signal(signal.SIGUSR2)
    await asyncio.sleep(0.2)
    await body()
    await asyncio.sleep(0.3)
    rows: dict[str, list[dict[str, Any]]] = {}
    for proc in services:
        role = "api" if proc.name == "api" else "worker"
        path = bench.workdir / f"trace-{role}-{proc.popen.pid}"
        path.unlink(missing_ok=True)
        proc.popen.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} wrote no trace")
            await asyncio.sleep(0.02)
        rows[proc.name] = [json.loads(line) for line in path.read_text().splitlines()]
    return rows


@dataclass
class Phases:
    accept: list[list[str]]
    pickup: list[list[str]]
    deltas: int
    other_during: list[list[str]]
    commit: list[list[str]]


def _evalsha(script: str) -> str:
    return "EVALSHA:" + hashlib.sha1(script.encode()).hexdigest()[:12]


# What a worker's own timers send whatever the turns do: the webhook outbox poll and the sweeper's lock and
# scan (each on its interval), and the idle poll (a claim, then the wait on the wake list).
_BACKGROUND = {
    f"LRANGE {keys.webhook_outbox()}", _evalsha(lua.source("expand_webhook")), _evalsha(lua.source("claim_webhooks")),
    f"SET {keys.SWEEPER_LOCK}", f"GET {keys.SWEEPER_LOCK}", f"PEXPIRE {keys.SWEEPER_LOCK}",
    _evalsha(lua.source("sweep_active_turns")),
    f"BLPOP {keys.QUEUE_WAKE}",
}


def split_phases(rows: dict[str, list[dict[str, Any]]]) -> Phases:
    claim = _evalsha(lua.source("claim_jobs"))
    accept = [r for r in rows["api"] if not any(c.startswith("XREAD") for c in r["cmds"])]
    accepted_at = accept[-1]["t"]
    ran = [rows[n] for n in rows if n != "api" and any(r["delta"] for r in rows[n])]
    if len(ran) != 1:
        raise RuntimeError(f"expected the turn on one worker, saw deltas on {len(ran)}")
    # The worker's idle loop (a claim, then BLPOP on the wake list) runs every poll interval whatever the
    # turn does; only the claim that took the turn belongs to it. Its other timers' round trips are not the
    # turn's either.
    idle_poll = {claim, *_BACKGROUND}
    mine = [r for r in ran[0] if r["t"] > accepted_at]
    first = next(i for i, r in enumerate(mine) if r["delta"])
    last = max(i for i, r in enumerate(mine) if r["delta"])
    start = next(i for i, r in enumerate(mine) if not set(r["cmds"]) <= idle_poll)
    claims = [r for r in mine[:start] if claim in r["cmds"]]
    return Phases(
        accept=[r["cmds"] for r in accept],
        pickup=[r["cmds"] for r in claims[-1:] + [r for r in mine[start:first] if not set(r["cmds"]) <= idle_poll]],
        deltas=sum(1 for r in mine if r["delta"]),
        other_during=[r["cmds"] for r in mine[first:last] if not r["delta"]],
        commit=[r["cmds"] for r in mine[last + 1 :] if not set(r["cmds"]) <= idle_poll],
    )


async def round_trip_section(bench: Bench, stack: latency.Stack) -> None:
    redis = aioredis.Redis(port=stack.redis_port)
    samples: list[Phases] = []
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:

            async def one_background_turn() -> None:
                body = {"model": latency.MODEL, "input": "chunks=3 spacing=100", "background": True}
                rid = (await http.post("/v1/responses", json=body)).raise_for_status().json()["id"]
                await until_all(redis, [rid], lambda s: s == "completed", "the traced turn")

            await one_background_turn()  # warm-up: scripts loaded, pools open
            for _ in range(bench.args.traced_turns):
                samples.append(split_phases(await traced(stack, bench, one_background_turn)))
    finally:
        await redis.aclose()
    say("\n== Redis round trips per turn by phase (background turn of 3 chunks at 100 ms, quiet stack; "
        f"a send hook in each service process; median of {len(samples)})")
    phases = {
        "accept (API)": [len(s.accept) for s in samples],
        "pickup + start (worker)": [len(s.pickup) for s in samples],
        "commit (worker)": [len(s.commit) for s in samples],
    }
    for name, counts in phases.items():
        say(f"  {name:<26} {ms([float(c) for c in counts], 50):>4.0f}   runs: {counts}")
    say(f"  {'delta writes':<26} {ms([float(s.deltas) for s in samples], 50):>4.0f}   (not counted)")
    say(f"  {'other while streaming':<26} {ms([float(len(s.other_during)) for s in samples], 50):>4.0f}")
    sample = samples[-1]
    for name, trips in (("accept", sample.accept), ("pickup", sample.pickup), ("commit", sample.commit)):
        say(f"    {name}: " + " | ".join(" ".join(t) for t in trips))
    total = sum(ms([float(c) for c in counts], 50) for counts in phases.values())
    bench.figure("Redis round trips per turn outside delta writes", f"{total:.0f}", "<= 6", total <= 6)


async def stack_section(bench: Bench) -> None:
    a = bench.args
    storage = {"TURNSTREAM_COMPACT_FINISHED_TURNS": "true" if a.storage == "compact" else "false"}
    with worker_cpu.raw_upstream(5, 0) as upstream:
        stack = latency.Stack(
            token_delay_ms=0, workers=2, poll_only=False, upstream_url=upstream, launcher=bench.launcher,
            # Room for every long turn with the short ones beside them.
            worker_env={"TURNSTREAM_MAX_JOBS": str(a.long_turns // 2 + 50),
                        "TURNSTREAM_MAX_OUTPUT_BYTES": "10000000", **storage},
            api_env=storage,
        )
        try:
            stack.start()
            await stack.wait_ready()
            client = sdk_client(stack)
            try:
                await round_trip_section(bench, stack)
                await first_token_section(bench, stack, client, upstream)
                await burst_cpu_section(bench, stack, client)
                await crowd_section(bench, stack, client)
            finally:
                await client.close()
            stack.check_alive()
        finally:
            stack.stop()


# --- 3. commands per poll ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def quiet_redis() -> AsyncIterator[ArqRedis]:
    port = worker_cpu.free_port()
    server = subprocess.Popen(  # noqa: ASYNC220  (started once, before anything is timed)
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    client = ArqRedis(port=port)
    try:
        for _ in range(100):
            with contextlib.suppress(aioredis.ConnectionError):
                await client.ping()
                break
            await asyncio.sleep(0.05)
        yield client
    finally:
        await client.aclose()
        server.terminate()
        server.wait()


async def commands(redis: ArqRedis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not k.endswith(("config", "info")))


async def poll_cost(running: int) -> tuple[int, int]:
    """Redis commands (inside scripts included) of an idle poll and of a poll that picks up one job."""
    queue = "bench:queue"
    async with quiet_redis() as redis:
        leases = JobLeases(redis, queue, lease_s=60)
        for i in range(running):
            await redis.enqueue_job(RUN_TURN, f"r{i}", _job_id=f"r{i}", _queue_name=queue)
        assert len(await leases.claim(running, "bench:")) == running
        await redis.config_resetstat()
        await leases.claim(10, "bench:")
        idle = await commands(redis)
        await redis.enqueue_job(RUN_TURN, "new", _job_id="new", _queue_name=queue)
        await redis.config_resetstat()
        assert len(await leases.claim(10, "bench:")) == 1
        return idle, await commands(redis)


async def poll_section(bench: Bench) -> None:
    few, many = 2, bench.args.long_turns
    (idle_few, pick_few), (idle_many, pick_many) = await poll_cost(few), await poll_cost(many)
    say("\n== Redis commands per poll (the worker's claim script, INFO commandstats, scripts' inner calls counted)")
    say(f"  {few:>3} running: idle poll {idle_few}, poll that picks up a job {pick_few}")
    say(f"  {many:>3} running: idle poll {idle_many}, poll that picks up a job {pick_many}")
    flat = idle_many == idle_few and pick_many == pick_few
    bench.figure(f"Redis commands per poll, {few} vs {many} running", f"{pick_few} vs {pick_many}",
                 "does not grow", flat)


# --- 4. fan-out ----------------------------------------------------------------------------------------------


async def fanout_section(bench: Bench) -> None:
    argv = ["--rates", "10000", "--seconds", str(bench.args.fanout_seconds)]
    args = fanout.parse_args(argv)
    say(f"\n== fan-out: 10 responses x 200 SSE tails on one API process ({bench.args.fanout_seconds:g} s window)")
    stack = fanout.Stack()
    try:
        levels, facts = await fanout.benchmark(stack, args)
    finally:
        stack.stop()
    fanout.report(levels, facts, args, ["fanout.py", *argv])
    level = levels[-1]
    p99 = ms(level.lags_ms, 99)
    bench.figure("fan-out lag p99 at 10k deliveries/s", f"{p99:.1f} ms", "<= 50 ms", p99 <= 50)
    bench.figure("fan-out API CPU per delivery", f"{level.cpu_us_per_delivery:.1f} µs", "<= 40 µs",
                 level.cpu_us_per_delivery <= 40)
    conns = {facts["redis_connections_tails_open"], facts["redis_connections_end"],
             *(c for lv in levels for c in lv.redis_connections)}
    bench.figure("fan-out API Redis connections", ", ".join(map(str, sorted(conns))), "constant", len(conns) == 1)


# --- 5. memory per stored turn ------------------------------------------------------------------------------


def memory_section(bench: Bench) -> None:
    a = bench.args
    argv = ["--short", str(a.memory_short), "--conversations", str(a.memory_short // 5),
            "--streamed", str(a.memory_streamed)]
    args = memory_per_turn.parse_args(argv)
    say(f"\n== Redis memory per finished turn ({a.memory_short} short turns over {a.memory_short // 5} "
        f"conversations, then {a.memory_streamed} streamed 200-word turns; own stack per storage form)")
    forms = {"as streamed": memory_per_turn.measure(False, args), "compact": memory_per_turn.measure(True, args)}
    memory_per_turn.report(forms, ["memory_per_turn.py", *argv])
    plain, compact = forms["as streamed"], forms["compact"]
    for name, attr, target in (("short", "short_b", memory_per_turn.TARGET_SHORT_B),
                               ("200-word streamed", "streamed_b", memory_per_turn.TARGET_STREAMED_B)):
        value, before = getattr(compact, attr), getattr(plain, attr)
        bench.figure(f"Redis memory per finished {name} turn (as streamed)", f"{value:,.0f} B ({before:,.0f} B)",
                     f"<= {target:,} B", value <= target)


# --- the run -------------------------------------------------------------------------------------------------


def summary(bench: Bench) -> None:
    say("\n== targets")
    width = max(len(f.name) for f in bench.figures)
    say(f"{'figure':<{width}}  {'measured':>26}  {'target':>14}")
    for f in bench.figures:
        verdict = "" if f.met is None else ("met" if f.met else "MISSED")
        say(f"{f.name:<{width}}  {f.value:>26}  {f.target:>14}  {verdict}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer turns and shorter windows (~3 min)")
    parser.add_argument("--skip", nargs="*", choices=SECTIONS, default=[], help="sections to leave out")
    parser.add_argument("--turns", type=int, default=200, help="first-token samples at 1 turn (half beside 50)")
    parser.add_argument("--bursts", type=int, default=4, help="50-turn bursts for service CPU per turn")
    parser.add_argument("--long-turns", type=int, default=300, help="long turns running beside a short one")
    parser.add_argument("--crowd-samples", type=int, default=30, help="short turns beside 2 and beside many")
    parser.add_argument("--traced-turns", type=int, default=5, help="turns whose round trips are counted")
    parser.add_argument("--cpu-turns", type=int, default=40)
    parser.add_argument("--cpu-chunks", type=int, default=200)
    parser.add_argument("--cpu-repeats", type=int, default=3)
    parser.add_argument("--fanout-seconds", type=float, default=15.0)
    parser.add_argument("--storage", choices=("compact", "plain"), default="compact",
                        help="how the stack section's services store finished turns")
    parser.add_argument("--memory-short", type=int, default=500, help="short turns of the memory section")
    parser.add_argument("--memory-streamed", type=int, default=50, help="streamed turns of the memory section")
    args = parser.parse_args(argv)
    if args.quick:
        args.turns, args.bursts, args.crowd_samples, args.traced_turns = 60, 2, 10, 3
        args.cpu_turns, args.cpu_chunks, args.cpu_repeats, args.fanout_seconds = 20, 100, 1, 6.0
        args.memory_short, args.memory_streamed = 200, 20
    return args


def main() -> int:
    argv = sys.argv[:]
    bench = Bench(parse_args(argv[1:]))
    say("turnstream benchmark")
    say(f"  command:  {shlex.join([sys.executable, *argv])}")
    say(f"  machine:  {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}")
    say(f"  redis:    {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.strip()}")
    started = time.monotonic()
    skip = set(bench.args.skip)
    try:
        if "cpu" not in skip:
            cpu_section(bench)
        if "stack" not in skip:
            uvloop.run(stack_section(bench))
        if "poll" not in skip:
            uvloop.run(poll_section(bench))
        if "fanout" not in skip:
            uvloop.run(fanout_section(bench))
        if "memory" not in skip:
            memory_section(bench)
    except KeyboardInterrupt:
        return 130
    summary(bench)
    say(f"\n  whole run: {time.monotonic() - started:.0f} s")
    return 0 if all(f.met is not False for f in bench.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
