"""Fan-out benchmark: many SSE tails on one API process, fed by direct writes to the response streams.

Starts a private redis-server and one API process (no workers, no model). It creates R responses through
the API (`background: true`: stored and queued, never picked up), opens T SSE tails on each
(`GET /v1/responses/{id}?stream=true`), then plays the worker's part: it appends text deltas to the
streams in the stream contract's format (entry id "<seq>-1", fields seq/type/attempt/data, the response
hash's `seq` moved along) at a target rate of deliveries per second (events/s x tails per response), for
each rate level in turn. Every delta carries the monotonic time it was written; each tail checks it gets
every event exactly once, in order, and records the lag from write to receipt.

    .venv/bin/python tests/benchmarks/fanout.py [--responses 10] [--tails 200] [--rates 2000 10000]
        [--seconds 15] [--py-spy] [--api-source DIR]

`--api-source` runs the API from another checkout (e.g. `git worktree add /tmp/base <commit>`), so one
session can measure before and after. `Stack(cluster_url=...)` runs the API on a Redis Cluster started elsewhere
instead (tests/benchmarks/bench.py's cluster section); the bench's key names then need the cluster's partitions
(shared.partitions.configure) in this process too.

Prints per level: delivery lag p50/p99, API CPU per delivery (utime+stime from /proc/<pid>/stat over the
measured window), the API's Redis connections, each beside its target. Not a pytest test: its numbers
depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
import redis.asyncio as aioredis
from measure import cpu_seconds, free_port, percentile
from redis.asyncio.cluster import ClusterPipeline

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared import keys  # noqa: E402  (the repository root is put on the path just above)

MODEL = "turnstream-mock"
READY_TIMEOUT_S = 30.0
TARGET_LAG_P99_MS = 50.0
TARGET_CPU_US = 40.0
MARK = b'"delta":"@'  # each delta starts with "@<monotonic ns>@"
PADDING = " lorem ipsum dolor sit amet" * 3  # ~80 characters: a few merged tokens, as the emitter writes them
AnyRedis = aioredis.Redis | aioredis.RedisCluster  # one redis-server's client, or a cluster's





def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the stack -------------------------------------------------------------------------------------


@dataclass
class Stack:
    api_source: Path | None = None
    # A running Redis Cluster's seed URL to run on instead of a redis-server of the stack's own.
    cluster_url: str | None = None
    redis_port: int = field(default_factory=free_port)  # the own redis-server's; unused on a cluster
    api_port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="turnstream-fanout-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_"))}
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**base, **env},
            cwd=self.workdir, start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    @property
    def redis_url(self) -> str:
        return self.cluster_url or f"redis://127.0.0.1:{self.redis_port}/0"

    def redis_client(self) -> AnyRedis:
        """The bench's own client, named so that it is not counted among the API's connections."""
        if self.cluster_url is not None:
            return aioredis.RedisCluster.from_url(self.cluster_url, client_name="bench")
        return aioredis.Redis(port=self.redis_port, client_name="bench")

    def start(self) -> None:
        if self.cluster_url is None:
            self.spawn(
                "redis",
                ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir)],
                {},
            )
        env = {
            "TURNSTREAM_REDIS_URL": self.redis_url,
            "TURNSTREAM_HOST": "127.0.0.1",
            "TURNSTREAM_PORT": str(self.api_port),
            # Delivery, not keys: tests/benchmarks/auth_overhead.py measures those.
            "TURNSTREAM_AUTH": "off",
        }
        if self.api_source is None:
            self.spawn("api", [str(Path(sys.executable).parent / "turnstream"), "api"], env)
        else:
            argv = [sys.executable, "-c", "from shared.cli import main; main(['api'])"]
            self.spawn("api", argv, {**env, "PYTHONPATH": str(self.api_source)})

    @property
    def api_pid(self) -> int:
        return self.procs["api"].pid

    def log_tail(self, name: str) -> str:
        return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-30:])

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                self.check_alive()
                try:
                    if (await http.get(f"http://127.0.0.1:{self.api_port}/readyz?exclude=workers")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not get ready:\n{self.log_tail('api')}")
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- SSE tails ------------------------------------------------------------------------------------

_ID = re.compile(rb"(?:^|\n)id: (\d+)\n")



class Tail(asyncio.Protocol):
    """One SSE client on a raw socket: it parses only what it checks, so the client side stays cheap."""

    def __init__(self, response_id: str, request: bytes, recorder: Recorder) -> None:
        loop = asyncio.get_running_loop()
        self.response_id = response_id
        self.request = request
        self.recorder = recorder
        self.buffer = b""
        self.last_seq = -1
        self.order_errors = 0
        self.first = loop.create_future()  # the replayed response.created arrived
        self.ended = loop.create_future()  # the terminal event arrived, or the connection closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        frames = (self.buffer + data).split(b"\n\n")
        self.buffer = frames.pop()
        for frame in frames:
            found = _ID.search(frame)
            if found is None:
                continue  # response headers, keep-alives
            seq = int(found.group(1))
            if seq != self.last_seq + 1:
                self.order_errors += 1  # a gap or a duplicate
            self.last_seq = seq
            if not self.first.done():
                self.first.set_result(None)
            at = frame.find(MARK)
            if at >= 0:
                start = at + len(MARK)
                self.recorder.delivered(int(frame[start : frame.index(b"@", start)]), now)
            elif b"event: response.completed" in frame and not self.ended.done():
                self.ended.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first.done():
            self.first.set_exception(ConnectionError("closed before the first event"))
        if not self.ended.done():
            self.ended.set_result(None)


@dataclass
class Recorder:
    window: tuple[int, int] = (0, 0)  # write times (monotonic ns) whose lag is kept
    lags_ms: list[float] = field(default_factory=list)
    count: int = 0  # every delivery of a delta, whenever it was written

    def delivered(self, written_ns: int, now_ns: int) -> None:
        self.count += 1
        if self.window[0] <= written_ns < self.window[1]:
            self.lags_ms.append((now_ns - written_ns) / 1e6)


# --- the worker's part ------------------------------------------------------------------------------


class Writer:
    """Appends deltas the way a worker's turn does: stream entry "<seq>-1" and the hash's `seq`, per event."""

    def __init__(self, redis: AnyRedis, seqs: dict[str, int]) -> None:
        self.redis = redis
        self.seqs = seqs
        self.order = list(seqs)
        self.written = 0

    async def write(self, count: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        written_ns = time.monotonic_ns()
        for _ in range(count):
            response_id = self.order[self.written % len(self.order)]
            self.written += 1
            seq = self.seqs[response_id] = self.seqs[response_id] + 1
            data = (
                f'{{"sequence_number":{seq},"type":"response.output_text.delta","item_id":"msg_bench",'
                f'"output_index":0,"content_index":0,"delta":"@{written_ns}@{PADDING}","logprobs":[]}}'
            )
            self._append(pipe, response_id, seq, "response.output_text.delta", data)
        await pipe.execute()

    async def finish(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for response_id in self.order:
            seq = self.seqs[response_id] = self.seqs[response_id] + 1
            body = {"id": response_id, "object": "response", "status": "completed", "output": []}
            data = json.dumps({"sequence_number": seq, "type": "response.completed", "response": body})
            self._append(pipe, response_id, seq, "response.completed", data)
            pipe.hset(keys.response(response_id), "status", "completed")
        await pipe.execute()

    @staticmethod
    def _append(
        pipe: aioredis.client.Pipeline | ClusterPipeline, response_id: str, seq: int, kind: str, data: str
    ) -> None:
        fields = {"seq": seq, "type": kind, "attempt": 1, "data": data}
        pipe.xadd(keys.events(response_id), fields, id=f"{seq}-1")  # type: ignore[arg-type]
        pipe.hset(keys.response(response_id), "seq", seq)


# --- measurement ----------------------------------------------------------------------------------------


@dataclass
class Level:
    rate: int
    lags_ms: list[float]
    expected: int  # deliveries of the events written in the window
    cpu_us_per_delivery: float
    deliveries_per_s: float
    redis_connections: tuple[int, int]  # at the start and the end of the window
    rss_mb: float


async def api_redis_connections(redis: AnyRedis) -> int:
    """Every client but the bench's. On a cluster: summed over the primaries, their replicas' links left out (a
    cluster client's connections for the cluster's own bookkeeping, e.g. tests/redis_cluster.py's, are counted)."""
    if isinstance(redis, aioredis.RedisCluster):
        per_node = await redis.client_list(target_nodes=aioredis.RedisCluster.PRIMARIES)
        clients = [c for node in per_node.values() for c in node if "S" not in c["flags"]]
    else:
        clients = await redis.client_list()
    return sum(1 for c in clients if c.get("name") != "bench")


async def run_level(
    stack: Stack, redis: AnyRedis, writer: Writer, recorder: Recorder, tails: int,
    rate: int, warmup_s: float, seconds: float, profile: Path | None,
) -> Level:
    events_per_s = rate / tails
    started = time.monotonic()
    written_at_start = writer.written
    window_start = started + warmup_s
    window_end = window_start + seconds
    recorder.window = (int(window_start * 1e9), int(window_end * 1e9))
    recorder.lags_ms = []
    written_before_window = writer.written
    cpu0 = count0 = 0.0
    conns0 = 0
    spy: subprocess.Popen[bytes] | None = None
    in_window = False
    while True:
        now = time.monotonic()
        if now >= window_end:
            break
        if not in_window and now >= window_start:
            in_window = True
            cpu0, count0, conns0 = cpu_seconds(stack.api_pid), recorder.count, await api_redis_connections(redis)
            written_before_window = writer.written
            if profile is not None:
                spy = subprocess.Popen(  # noqa: ASYNC220  (started once, in the background)
                    [py_spy_exe(), "record", "--pid", str(stack.api_pid), "--duration", str(int(seconds)),
                     "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(profile)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
        due = int(events_per_s * (now - started)) - (writer.written - written_at_start)
        if due > 0:
            await writer.write(due)
        await asyncio.sleep(0.002)
    cpu1, count1 = cpu_seconds(stack.api_pid), recorder.count
    conns1 = await api_redis_connections(redis)
    window_written = writer.written - written_before_window
    elapsed = time.monotonic() - window_start
    # Let what was written in the window arrive (or give up: a tail that fell behind shows as missing).
    expected = window_written * tails
    deadline = time.monotonic() + 30
    while len(recorder.lags_ms) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    if spy is not None:
        spy.wait(timeout=seconds + 30)
    stack.check_alive()
    deliveries = count1 - count0
    return Level(
        rate=rate,
        lags_ms=list(recorder.lags_ms),
        expected=expected,
        cpu_us_per_delivery=(cpu1 - cpu0) / deliveries * 1e6 if deliveries else float("nan"),
        deliveries_per_s=deliveries / elapsed,
        redis_connections=(conns0, conns1),
        rss_mb=rss_mb(stack.api_pid),
    )


async def create_responses(port: int, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=10) as http:
        ids = []
        for i in range(count):
            reply = await http.post("/responses", json={"model": MODEL, "input": f"bench {i}", "background": True})
            reply.raise_for_status()
            ids.append(reply.json()["id"])
        return ids


async def benchmark(stack: Stack, args: argparse.Namespace) -> tuple[list[Level], dict[str, object]]:
    stack.start()
    await stack.wait_ready()
    redis = stack.redis_client()
    loop = asyncio.get_running_loop()
    facts: dict[str, object] = {}
    try:
        facts["redis_connections_idle"] = await api_redis_connections(redis)
        response_ids = await create_responses(stack.api_port, args.responses)
        seqs = {rid: int(await redis.hget(keys.response(rid), "seq") or 0) for rid in response_ids}
        recorder = Recorder()
        tails: list[Tail] = []
        opened = time.monotonic()
        for batch_start in range(0, args.tails, 50):
            batch = []
            for response_id in response_ids:
                request = (
                    f"GET /v1/responses/{response_id}?stream=true HTTP/1.1\r\n"
                    "Host: bench\r\nAccept: text/event-stream\r\n\r\n"
                ).encode()
                for _ in range(min(50, args.tails - batch_start)):
                    tail = Tail(response_id, request, recorder)
                    batch.append(loop.create_connection(lambda t=tail: t, "127.0.0.1", stack.api_port))
            for _, tail in await asyncio.gather(*batch):
                tails.append(tail)
        async with asyncio.timeout(60):
            await asyncio.gather(*(t.first for t in tails))
        facts["tails"] = len(tails)
        facts["open_s"] = time.monotonic() - opened
        facts["redis_connections_tails_open"] = await api_redis_connections(redis)
        facts["rss_mb_tails_open"] = rss_mb(stack.api_pid)
        writer = Writer(redis, seqs)
        levels = []
        for i, rate in enumerate(args.rates):
            profile = None
            if args.py_spy and i == len(args.rates) - 1:
                profile = stack.workdir / "py-spy.txt"
            print(f"rate {rate} deliveries/s ...", file=sys.stderr, flush=True)
            levels.append(
                await run_level(stack, redis, writer, recorder, args.tails, rate, args.warmup, args.seconds, profile)
            )
            if profile is not None and profile.exists():
                facts["profile"] = profile_top(profile.read_text(), 20)
        await writer.finish()
        async with asyncio.timeout(30):
            await asyncio.gather(*(t.ended for t in tails))
        facts["order_errors"] = sum(t.order_errors for t in tails)
        facts["tails_at_terminal"] = sum(1 for t in tails if t.last_seq == seqs[t.response_id])
        facts["redis_connections_end"] = await api_redis_connections(redis)
        return levels, facts
    finally:
        await redis.aclose()


def profile_top(raw: str, count: int) -> str:
    """Own and total samples per function from py-spy's collapsed stacks ("a;b;c <samples>" per line)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack_text, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack_text.split(";")]
        samples += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            total[frame] += int(n)
    lines = [f"  {samples} samples; own% / total%  function (file)"]
    for frame, n in own.most_common(count):
        lines.append(f"  {100 * n / samples:5.1f} / {100 * total[frame] / samples:5.1f}  {frame}")
    return "\n".join(lines)


def report(levels: list[Level], facts: dict[str, object], args: argparse.Namespace, argv: list[str]) -> None:
    print()
    print("turnstream fan-out benchmark")
    print(f"  command:  {shlex.join([sys.executable, *argv])}")
    print(f"  API code: {args.api_source or ROOT}")
    print(f"  machine:  {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}")
    print(f"  load:     {args.responses} responses x {args.tails} SSE tails = {facts['tails']} tails on one API "
          f"process; ~{len(PADDING) + 20}-character deltas")
    print(f"  opened:   all tails replayed response.created in {facts['open_s']:.1f} s; API RSS "
          f"{facts['rss_mb_tails_open']:.0f} MB")
    print()
    header = (f"{'deliveries/s':>12} {'measured':>9} | {'lag p50':>8} {'p99':>8} {'(<= 50 ms)':>10} | "
              f"{'API CPU/delivery':>16} {'(<= 40 us)':>10} | {'missing':>7} | {'API RSS':>7}")
    print(header)
    print("-" * len(header))
    for lv in levels:
        missing = lv.expected - len(lv.lags_ms)
        p99 = percentile(lv.lags_ms, 99)
        print(
            f"{lv.rate:>12} {lv.deliveries_per_s:>9.0f} | {percentile(lv.lags_ms, 50):>6.1f}ms {p99:>6.1f}ms"
            f" {'ok' if p99 <= TARGET_LAG_P99_MS else 'MISSED':>10} | {lv.cpu_us_per_delivery:>14.1f}us"
            f" {'ok' if lv.cpu_us_per_delivery <= TARGET_CPU_US else 'MISSED':>10} | {missing:>7} |"
            f" {lv.rss_mb:>5.0f}MB"
        )
    print()
    conns = [facts["redis_connections_idle"], facts["redis_connections_tails_open"]]
    for lv in levels:
        conns += list(lv.redis_connections)
    conns.append(facts["redis_connections_end"])
    constant = "ok" if len(set(conns[1:])) == 1 else "CHANGED"
    print(f"  API Redis connections (target: constant): idle {conns[0]}, tails open {conns[1]}, "
          f"per level start/end {conns[2:-1]}, end {conns[-1]}  [{constant}]")
    print(f"  order errors (gaps or duplicates, target 0): {facts['order_errors']}; "
          f"tails that got the terminal event: {facts['tails_at_terminal']} of {facts['tails']}")
    print("  lag: write (just before the pipeline carrying the XADD) -> the tail's data_received, same clock")
    print("  API CPU: utime+stime of the API process over the measured window / deliveries in it")
    if "profile" in facts:
        print(f"\n  py-spy (API process, last level):\n{facts['profile']}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=10)
    parser.add_argument("--tails", type=int, default=200, help="SSE tails per response")
    parser.add_argument("--rates", type=int, nargs="+", default=[2000, 10000], help="deliveries/s per level")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each window")
    parser.add_argument("--py-spy", action="store_true", help="profile the API with py-spy during the last level")
    parser.add_argument("--api-source", type=Path, default=None, help="run the API from this checkout")
    args = parser.parse_args(argv)
    if args.py_spy and not Path(py_spy_exe()).exists():
        parser.error("--py-spy needs py-spy beside this Python or on PATH (pip install py-spy)")
    return args


def py_spy_exe() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so that main()'s teardown runs on `kill` too


def main() -> int:
    argv = sys.argv[:]
    args = parse_args(argv[1:])
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    stack = Stack(api_source=args.api_source.resolve() if args.api_source else None)
    try:
        try:
            import uvloop  # the tails' side of the load should cost as little as possible

            levels, facts = uvloop.run(benchmark(stack, args))
        except ImportError:
            levels, facts = asyncio.run(benchmark(stack, args))
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, TimeoutError) as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
    report(levels, facts, args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
