"""Latency benchmark: enqueue -> pickup and POST -> first token, against a real local stack.

Starts a private redis-server, the mock model, worker(s) and the API as subprocesses, drives streaming
turns through the openai SDK at each concurrency level, prints a table and tears everything down. `Stack`
also runs on a Redis Cluster started elsewhere (`cluster_url`), as tests/benchmarks/bench.py's cluster
section does.

    .venv/bin/python tests/benchmarks/latency.py [--turns N] [--concurrency 1 50] [--token-delay-ms 20]

Not a pytest test: it takes minutes and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import httpx2
import openai
import redis.asyncio as aioredis
from measure import free_port, percentile

# The bench's client of the stack's Redis: one redis-server's, or a cluster's, which follows its slots.
AnyRedis = aioredis.Redis | aioredis.RedisCluster

MODEL = "turnstream-mock"
PROMPT = "count to 5"
READY_TIMEOUT_S = 60.0
TURN_TIMEOUT_S = 120.0

# Running a worker with its wake key renamed to one nobody pushes to leaves only the BLPOP timeout,
# i.e. a plain poll every TURNSTREAM_POLL_DELAY_S: the behaviour of stock arq, without editing the worker.
_POLL_ONLY_WORKER = (
    "import shared.keys\n"
    "shared.keys.QUEUE_WAKE = 'turnstream:bench-never-woken'\n"
    "from shared.cli import main\n"
    "main(['worker'])\n"
)


# --- the stack under test ----------------------------------------------------------------------



def turnstream_exe() -> str:
    beside = Path(sys.executable).parent / "turnstream"
    if beside.exists():
        return str(beside)
    found = shutil.which("turnstream")
    if found is None:
        raise SystemExit("the `turnstream` console script is not installed next to this Python")
    return found


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, lines: int = 30) -> str:
        self.log_file.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Stack:
    token_delay_ms: float
    workers: int
    poll_only: bool
    # An OpenAI-compatible upstream already running (e.g. worker_cpu.raw_upstream); None starts the mock.
    upstream_url: str | None = None
    worker_env: dict[str, str] = field(default_factory=dict)
    api_env: dict[str, str] = field(default_factory=dict)
    # argv that runs a service ("api" or "worker") instead of the console script, e.g. under a probe.
    launcher: Callable[[str], list[str]] | None = None
    # A running Redis Cluster's seed URL (e.g. tests/redis_cluster.py's LocalCluster.url) to run on instead of
    # a redis-server of the stack's own; the services find out it is a cluster by themselves.
    cluster_url: str | None = None
    redis_port: int = field(default_factory=free_port)  # the own redis-server's; unused on a cluster
    # The own redis-server with a replica of it, as a deployment that fails over runs it (a cluster's primaries
    # each have theirs): the primary then pays for feeding it.
    replica: bool = False
    replica_port: int = field(default_factory=free_port)
    mock_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="turnstream-bench-")))

    @property
    def redis_url(self) -> str:
        return self.cluster_url or f"redis://127.0.0.1:{self.redis_port}/0"

    def redis_client(self) -> AnyRedis:
        """A client of the stack's Redis for the bench to read keys with (built by shared.keys, which must be
        configured for a cluster's partitions in this process too: shared.partitions.configure)."""
        if self.cluster_url is not None:
            return aioredis.RedisCluster.from_url(self.cluster_url)
        return aioredis.Redis(host="127.0.0.1", port=self.redis_port)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def mock_url(self) -> str:
        return f"http://127.0.0.1:{self.mock_port}"

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        # The caller's own TURNSTREAM_* / OPENAI_* settings must not leak into the stack being measured.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_"))}
        env.update(extra)
        return env

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Proc:
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("wb")
        # A session of its own keeps a terminal Ctrl-C away from the children, so teardown stays ordered.
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=self._env(env),
            # The workdir holds no .env file, so Settings reads only the variables given here.
            cwd=self.workdir,
            start_new_session=True,
        )
        proc = Proc(name, popen, log_path, log_file)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        exe = turnstream_exe()
        if self.cluster_url is None:
            servers = [("redis", self.redis_port, ["--repl-diskless-sync-delay", "0"])]
            if self.replica:
                servers.append(("replica", self.replica_port, ["--replicaof", "127.0.0.1", str(self.redis_port)]))
            for name, port, extra in servers:
                self._spawn(
                    name,
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--daemonize", "no", *extra],
                    {},
                )
        if self.upstream_url is None:
            self._spawn(
                "mock",
                [exe, "mock"],
                {
                    "TURNSTREAM_HOST": "127.0.0.1",
                    "TURNSTREAM_MOCK_PORT": str(self.mock_port),
                    "TURNSTREAM_MOCK_TOKEN_DELAY_MS": str(self.token_delay_ms),
                },
            )
        worker_env = {
            "TURNSTREAM_REDIS_URL": self.redis_url,
            "OPENAI_BASE_URL": self.upstream_url or f"{self.mock_url}/v1",
            "OPENAI_API_KEY": "bench",
            "TURNSTREAM_MAX_JOBS": "100",
            **self.worker_env,
        }
        for i in range(self.workers):
            if self.launcher is not None:
                argv = self.launcher("worker")
            else:
                argv = [sys.executable, "-c", _POLL_ONLY_WORKER] if self.poll_only else [exe, "worker"]
            self._spawn(f"worker{i + 1}", argv, worker_env)
        self._spawn(
            "api",
            self.launcher("api") if self.launcher is not None else [exe, "api"],
            {
                "TURNSTREAM_HOST": "127.0.0.1",
                "TURNSTREAM_PORT": str(self.api_port),
                "TURNSTREAM_REDIS_URL": self.redis_url,
                # Pickup and first-token latency, not keys: tests/benchmarks/auth_overhead.py measures those.
                "TURNSTREAM_AUTH": "off",
                **self.api_env,
            },
        )

    def check_alive(self) -> None:
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                raise RuntimeError(f"{proc.name} exited with code {code}; last log lines:\n{proc.log_tail()}")

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with httpx2.AsyncClient(timeout=2.0) as http:
            await self._until(deadline, "redis PING", self._redis_pings)
            if self.replica and self.cluster_url is None:
                await self._until(deadline, "the replica's link to its primary", self._replica_linked)
            if self.upstream_url is None:
                await self._until(
                    deadline, "mock model /v1/models", lambda: self._lists_model(http, self.mock_url)
                )
            # /v1/models on the API falls back to the default model before any worker has published its
            # agents, so it cannot tell that the workers are up; each worker logs this once it can take jobs.
            await self._until(deadline, "workers ready", self._workers_logged_ready)
            await self._until(deadline, "API /readyz", lambda: self._status_ok(http, f"{self.api_url}/readyz"))
            await self._until(deadline, "API /v1/models", lambda: self._lists_model(http, self.api_url))

    async def _until(self, deadline: float, what: str, probe: Callable[[], Awaitable[bool]]) -> None:
        while True:
            self.check_alive()
            try:
                if await probe():
                    return
            except (httpx2.HTTPError, OSError, aioredis.RedisError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)

    async def _redis_pings(self) -> bool:
        client = self.redis_client()
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    async def _replica_linked(self) -> bool:
        async with aioredis.Redis(host="127.0.0.1", port=self.replica_port) as replica:
            return (await replica.info("replication")).get("master_link_status") == "up"

    async def _workers_logged_ready(self) -> bool:
        workers = [p for p in self.procs if p.name.startswith("worker")]
        return all("worker ready" in p.log_tail(lines=200) for p in workers)

    @staticmethod
    async def _status_ok(http: httpx2.AsyncClient, url: str) -> bool:
        return (await http.get(url)).status_code == 200

    @staticmethod
    async def _lists_model(http: httpx2.AsyncClient, base: str) -> bool:
        reply = await http.get(f"{base}/v1/models")
        return reply.status_code == 200 and any(m.get("id") == MODEL for m in reply.json().get("data", []))

    def stop(self) -> None:
        # API first so no new turns arrive, then workers, then what they depend on.
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
            proc.log_file.close()
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- measurement --------------------------------------------------------------------------------


@dataclass
class Turn:
    created_ms: float | None = None  # POST -> response.created (the API stored and enqueued the turn)
    pickup_ms: float | None = None  # POST -> response.in_progress (a worker picked the job up)
    first_delta_ms: float | None = None  # POST -> first response.output_text.delta, gross
    total_ms: float | None = None
    response_id: str | None = None
    error: str | None = None


async def one_turn(client: openai.AsyncOpenAI, prompt: str = PROMPT) -> Turn:
    turn = Turn()
    t0 = time.perf_counter()

    def since() -> float:
        return (time.perf_counter() - t0) * 1000.0

    try:
        stream = await client.responses.create(model=MODEL, input=prompt, stream=True)
        async with stream:
            async for event in stream:
                if event.type == "response.created":
                    turn.created_ms = since()
                    turn.response_id = event.response.id
                elif event.type == "response.in_progress":
                    if turn.pickup_ms is None:
                        turn.pickup_ms = since()
                elif event.type == "response.output_text.delta":
                    if turn.first_delta_ms is None:
                        turn.first_delta_ms = since()
                elif event.type == "response.completed":
                    turn.total_ms = since()
                elif event.type in ("response.failed", "response.incomplete", "error"):
                    turn.error = event.type
    except Exception as exc:  # a benchmark counts failures instead of stopping at the first
        turn.error = f"{type(exc).__name__}: {exc}"
    if turn.error is None and turn.total_ms is None:
        turn.error = "stream ended without response.completed"
    return turn


async def run_level(client: openai.AsyncOpenAI, concurrency: int, turns: int) -> tuple[list[Turn], float]:
    results: list[Turn] = []
    remaining: Iterator[int] = iter(range(turns))

    async def lane() -> None:
        # Every lane pulls from one shared iterator, so exactly `turns` turns run with at most `concurrency` open.
        for _ in remaining:
            results.append(await one_turn(client))

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return results, time.perf_counter() - started



@dataclass
class LevelResult:
    concurrency: int
    turns: int
    failures: int
    failure_kinds: dict[str, int]
    created: list[float]
    pickup: list[float]
    first_delta_net: list[float]
    wall_s: float


async def benchmark(stack: Stack, args: argparse.Namespace) -> list[LevelResult]:
    stack.start()
    await stack.wait_ready()
    http_client = openai.DefaultAsyncHttpxClient(
        limits=httpx2.Limits(max_connections=200, max_keepalive_connections=200),
        timeout=httpx2.Timeout(TURN_TIMEOUT_S, connect=5.0),
    )
    client = openai.AsyncOpenAI(
        base_url=f"{stack.api_url}/v1", api_key="bench", max_retries=0, http_client=http_client
    )
    levels: list[LevelResult] = []
    try:
        for concurrency in args.concurrency:
            turns = args.turns if args.turns is not None else (200 if concurrency == 1 else 500)
            # At least one turn per lane, so every pooled connection is open before timing starts.
            warm, _ = await run_level(client, concurrency, max(args.warmup, concurrency))
            warm_failed = sum(1 for t in warm if t.error)
            if warm_failed:
                print(f"warning: {warm_failed} warm-up turns failed at c={concurrency}", file=sys.stderr)
            stack.check_alive()
            print(f"c={concurrency}: running {turns} turns ...", file=sys.stderr, flush=True)
            results, wall = await run_level(client, concurrency, turns)
            stack.check_alive()
            ok = [t for t in results if t.error is None]
            kinds: dict[str, int] = {}
            for t in results:
                if t.error is not None:
                    kinds[t.error] = kinds.get(t.error, 0) + 1
            # The mock answers the role chunk (empty content, which the worker skips) at once and sleeps
            # token_delay_ms before every content chunk, the first included: subtract exactly one delay.
            first_net = [t.first_delta_ms - args.token_delay_ms for t in ok if t.first_delta_ms is not None]
            levels.append(
                LevelResult(
                    concurrency=concurrency,
                    turns=turns,
                    failures=len(results) - len(ok),
                    failure_kinds=kinds,
                    created=[t.created_ms for t in ok if t.created_ms is not None],
                    pickup=[t.pickup_ms for t in ok if t.pickup_ms is not None],
                    first_delta_net=first_net,
                    wall_s=wall,
                )
            )
    finally:
        await client.close()
    return levels


# --- report -------------------------------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return "unknown"


def report(levels: list[LevelResult], args: argparse.Namespace, argv: list[str]) -> None:
    mode = "poll-only (wake-on-enqueue disabled)" if args.poll_only else "wake-on-enqueue (default)"
    print()
    print("turnstream latency benchmark")
    print(f"  command:      {shlex.join([sys.executable, *argv])}")
    print(f"  machine:      {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}")
    print(f"  redis:        {_version(['redis-server', '--version'])}")
    print(f"  openai SDK:   {openai.__version__}")
    print(f"  stack:        {args.workers} worker process(es) (max_jobs 100 each), 1 API, 1 mock, {mode}")
    print(f"  turn:         {MODEL!r}, input {PROMPT!r} (5 tokens), mock token delay {args.token_delay_ms:g} ms")
    print()
    header = (
        f"{'conc':>4} {'turns':>6} {'fail':>5} | {'created p50':>11} {'p99':>7} | {'pickup p50':>10} {'p99':>7} |"
        f" {'1st delta p50':>13} {'p99':>7} | {'turns/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for lv in levels:
        print(
            f"{lv.concurrency:>4} {lv.turns:>6} {lv.failures:>5} |"
            f" {percentile(lv.created, 50):>11.1f} {percentile(lv.created, 99):>7.1f} |"
            f" {percentile(lv.pickup, 50):>10.1f} {percentile(lv.pickup, 99):>7.1f} |"
            f" {percentile(lv.first_delta_net, 50):>13.1f} {percentile(lv.first_delta_net, 99):>7.1f} |"
            f" {lv.turns / lv.wall_s:>8.1f}"
        )
    print()
    print("  all latencies in ms, measured at the client with time.perf_counter() from just before the POST")
    print("  created    POST -> response.created event: the API stored and enqueued the turn")
    print("  pickup     POST -> response.in_progress event (enqueue -> pickup as the client sees it). Stream")
    print("             entries carry no timestamps, so this client-side figure is the one reported; it includes")
    print("             the API's accept and the Redis -> API -> SSE hop back to the client.")
    print(f"  1st delta  POST -> first response.output_text.delta, minus the mock's {args.token_delay_ms:g} ms")
    print("             pre-first-token sleep (it sleeps token_delay_ms before every content chunk)")
    print("  turns/s    measured turns / wall time of the level (warm-up excluded)")
    print()
    for lv in levels:
        for kind, n in sorted(lv.failure_kinds.items()):
            print(f"  failures at c={lv.concurrency}: {n} x {kind}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=None, help="turns per level (default 200 at c=1, else 500)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50], help="concurrency levels")
    parser.add_argument("--token-delay-ms", type=float, default=20.0, help="mock model delay before each token")
    parser.add_argument("--warmup", type=int, default=10, help="untimed turns per level (at least one per lane)")
    parser.add_argument("--workers", type=int, choices=(1, 2), default=2, help="worker processes")
    parser.add_argument(
        "--poll-only",
        action="store_true",
        help="workers ignore the enqueue wake-up and only poll every TURNSTREAM_POLL_DELAY_S (0.5 s)",
    )
    args = parser.parse_args(argv)
    if args.turns is not None and args.turns < 1:
        parser.error("--turns must be at least 1")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency levels must be at least 1")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turned into an exception so the teardown in main()'s finally runs on `kill` too, not only Ctrl-C.
    raise KeyboardInterrupt


def main() -> int:
    argv = sys.argv[:]
    args = parse_args(argv[1:])
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    stack = Stack(token_delay_ms=args.token_delay_ms, workers=args.workers, poll_only=args.poll_only)
    try:
        levels = asyncio.run(benchmark(stack, args))
    except KeyboardInterrupt:
        print("interrupted; stopping the stack", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
    report(levels, args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
