"""Redis Cluster capacity, in one run: how evenly a load spreads over the primaries, and what the cluster costs a
turn beside one redis-server.

Two stacks (mock model, API, two workers: tests/conftest.py's running_stack) run side by side: one on a
LocalCluster (three primaries with a replica each, tests/redis_cluster.py), one on a standalone redis-server
with the cluster nodes' persistence (AOF, fsync every second, no RDB). Through the official `openai` SDK:

1. Balance, on the cluster: CONFIG RESETSTAT on every primary, then the load — M conversations created, then
   N plain turns (`responses.create(..., conversation=...)`, not streamed) round-robin over them from 32
   threads. Per primary: the commands it ran (INFO commandstats, the sum of every command's calls) and its keys
   (DBSIZE), each against the primaries' mean. The target: every one within ±25% of the mean.
2. Redis per turn: the same load on the standalone; for each, Redis CPU (INFO cpu: used_cpu_sys +
   used_cpu_user) and used_memory over the turns alone (read after the conversations are created, and after
   the last turn), summed over the primaries, divided by N.
3. Accept latency: the SDK call's wall time of background creates (`background=True`, no conversation), one
   at a time, alternating between the two stacks so both see the same machine.

    .venv/bin/python tests/benchmarks/cluster_capacity.py [--turns 1000] [--conversations 500] [--quick]

The cluster's primaries also feed their replicas and gossip on the cluster bus; the standalone has neither, so
the CPU ratio is that of a highly available cluster against a single node. The workers' idle polling runs on
both and is counted on both. Not a pytest test: the figures depend on the machine and the Redis version.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import openai
import redis
from openai.types.responses import Response

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared import partitions  # noqa: E402  (the repository root is put on the path just above)
from tests.benchmarks.measure import percentile  # noqa: E402
from tests.conftest import RedisServer, Stack, free_port, running_stack, wait_until  # noqa: E402
from tests.redis_cluster import LocalCluster, SlotRange  # noqa: E402

MODEL = "turnstream-mock"
PROMPT = "My name is Ravi."
PARTITIONS = 16
THREADS = 32
ACCEPTS = 200
TARGET_DEVIATION_PCT = 25.0
# Workers that finished a turn's reply may still be writing its last records for a moment.
SETTLE_S = 1.0
# The standalone's persistence, as LocalCluster gives each node: AOF with Redis' default fsync every second.
STANDALONE_ARGS = ("--save", "", "--appendonly", "yes", "--appendfsync", "everysec")


@dataclass
class ClusterSeed:
    """What running_stack reads of its server, for a cluster: `url` for the service, and `client()` to count the
    workers' cards (keys.AGENTS is in one slot, which a plain client of the seed node may not serve)."""

    cluster: LocalCluster
    _client: redis.RedisCluster = field(init=False)

    def __post_init__(self) -> None:
        self._client = redis.RedisCluster.from_url(self.cluster.url)

    @property
    def url(self) -> str:
        return self.cluster.url

    def client(self) -> redis.RedisCluster:
        return self._client


@dataclass
class RedisUse:
    """Summed over a Redis' primaries at one moment."""

    cpu_s: float
    memory_b: int
    # Clients' and replicas' buffers, the replication backlog and the AOF buffer: a connection's or a
    # replica's, no turn's. The backlog fills up to its 1 MB on each primary of the cluster as writes go by.
    buffers_b: int


@dataclass
class PrimaryLoad:
    port: int
    slots: list[SlotRange]
    partitions: int
    calls: dict[str, int]  # command -> calls (INFO commandstats)
    keys: int

    @property
    def commands(self) -> int:
        return sum(self.calls.values())


@dataclass
class Figures:
    """One Redis' results."""

    turns_per_s: float = 0.0
    cpu_us_per_turn: float = 0.0
    bytes_per_turn: float = 0.0
    bytes_per_turn_less_buffers: float = 0.0
    accept_ms: list[float] = field(default_factory=list)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)


def node(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=10)


def redis_use(ports: Sequence[int]) -> RedisUse:
    use = RedisUse(0.0, 0, 0)
    for port in ports:
        with node(port) as r:
            cpu, memory = r.info("cpu"), r.info("memory")
        use.cpu_s += float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        use.memory_b += int(memory["used_memory"])
        use.buffers_b += sum(
            int(memory[name])
            for name in ("mem_clients_normal", "mem_clients_slaves", "mem_replication_backlog", "mem_aof_buffer")
        )
    return use


def calls_by_command(port: int) -> dict[str, int]:
    with node(port) as r:
        stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


def partitions_served(ranges: list[SlotRange]) -> int:
    return sum(any(lo <= partitions.slot(tag) <= hi for lo, hi in ranges) for tag in partitions.tags(PARTITIONS))


def sdk(base_url: str) -> openai.OpenAI:
    # No retries: a failed call is counted, not hidden.
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def outcome(call: Callable[[], Response]) -> str:
    """The call's response status ("completed", or the status and its error), or the exception it raised."""
    try:
        response = call()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if response.status == "completed":
        return "completed"
    detail = response.error or response.incomplete_details
    return f"{response.status}: {detail}"


def run_load(base_url: str, args: argparse.Namespace, ports: Sequence[int], figures: Figures) -> None:
    """Creates the conversations, then sends the turns to the API at `base_url` (".../v1"); Redis CPU and memory
    of the Redis on `ports` are read around the turns alone."""
    client = sdk(base_url)
    with ThreadPoolExecutor(THREADS) as pool:
        conversations = list(pool.map(lambda _: client.conversations.create().id, range(args.conversations)))

        def turn(i: int) -> str:
            conversation = conversations[i % len(conversations)]
            return outcome(lambda: client.responses.create(model=MODEL, input=PROMPT, conversation=conversation))

        time.sleep(SETTLE_S)
        before = redis_use(ports)
        start = time.perf_counter()
        outcomes = collections.Counter(pool.map(turn, range(args.turns)))
        elapsed = time.perf_counter() - start
    time.sleep(SETTLE_S)
    after = redis_use(ports)
    client.close()
    figures.turns_per_s = args.turns / elapsed
    figures.cpu_us_per_turn = (after.cpu_s - before.cpu_s) * 1e6 / args.turns
    figures.bytes_per_turn = (after.memory_b - before.memory_b) / args.turns
    less_buffers = (after.memory_b - after.buffers_b) - (before.memory_b - before.buffers_b)
    figures.bytes_per_turn_less_buffers = less_buffers / args.turns
    figures.failures.update({f"turn: {o}": n for o, n in outcomes.items() if o != "completed"})


def primary_loads(primaries: list[tuple[int, list[SlotRange]]]) -> list[PrimaryLoad]:
    loads = []
    for port, slots in primaries:
        with node(port) as r:
            keys = int(r.dbsize())
        loads.append(PrimaryLoad(port, slots, partitions_served(slots), calls_by_command(port), keys))
    return loads


def accept_latency(stacks: dict[str, Stack], figures: dict[str, Figures], accepts: int) -> None:
    """`accepts` background creates on each stack, alternating; then waits for every one of their turns to end
    and counts the ones that did not complete."""
    clients = {name: sdk(stack.base_url) for name, stack in stacks.items()}
    created: dict[str, list[str]] = {name: [] for name in stacks}
    for round_ in range(10 + accepts):  # the first 10 warm up (connections open, scripts loaded)
        for name, client in clients.items():
            start = time.perf_counter()
            try:
                response = client.responses.create(model=MODEL, input=PROMPT, background=True)
            except Exception as exc:
                figures[name].failures[f"background create: {type(exc).__name__}: {str(exc)[:200]}"] += 1
                continue
            took_ms = (time.perf_counter() - start) * 1000
            if round_ >= 10:
                figures[name].accept_ms.append(took_ms)
            created[name].append(response.id)
    for name, client in clients.items():
        for response_id in created[name]:
            result = outcome(lambda rid=response_id, c=client: finished(c, rid))
            if result != "completed":
                figures[name].failures[f"background turn: {result}"] += 1
        client.close()


def finished(client: openai.OpenAI, response_id: str, timeout: float = 60) -> Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def start_standalone(workdir: Path) -> RedisServer:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), *STANDALONE_ARGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, proc, workdir)
    wait_until(lambda: server.client().ping(), what="redis-server")
    return server


@contextlib.contextmanager
def standalone(workdir: Path) -> Iterator[RedisServer]:
    server = start_standalone(workdir)
    try:
        yield server
    finally:
        server.proc.kill()
        server.proc.wait(timeout=10)


def log_tails(stacks: dict[str, Stack]) -> None:
    for name, stack in stacks.items():
        for log in sorted(stack.logdir.iterdir()):
            sys.stderr.write(f"--- {name}: {log.name} ---\n{log.read_text()[-4000:]}\n")


def pct(value: float, mean: float) -> float:
    return (value - mean) / mean * 100 if mean else 0.0


def worst_deviations(loads: list[PrimaryLoad]) -> tuple[float, float]:
    """The farthest any primary's commands and keys are from the primaries' mean, in % of it (signed)."""
    mean_commands = sum(p.commands for p in loads) / len(loads)
    mean_keys = sum(p.keys for p in loads) / len(loads)
    commands = max((pct(p.commands, mean_commands) for p in loads), key=abs)
    keys = max((pct(p.keys, mean_keys) for p in loads), key=abs)
    return commands, keys


def report_balance(loads: list[PrimaryLoad]) -> bool:
    """Prints each primary against the mean; True when every figure is within the target."""
    print(
        f"  {'primary':<9}{'slots':<13}{'partitions':>11}{'commands':>12}{'vs mean':>10}{'':>9}"
        f"{'keys':>9}{'vs mean':>10}"
    )
    mean_commands = sum(p.commands for p in loads) / len(loads)
    mean_keys = sum(p.keys for p in loads) / len(loads)
    met = True
    for p in loads:
        slots = ",".join(f"{lo}-{hi}" for lo, hi in p.slots)
        commands, keys = pct(p.commands, mean_commands), pct(p.keys, mean_keys)
        ok_commands, ok_keys = abs(commands) <= TARGET_DEVIATION_PCT, abs(keys) <= TARGET_DEVIATION_PCT
        met = met and ok_commands and ok_keys
        print(
            f"  :{p.port:<8}{slots:<13}{p.partitions:>11}{p.commands:>12,}{commands:>+9.1f}%"
            f"{'  within' if ok_commands else ' OUTSIDE':>9}{p.keys:>9,}{keys:>+9.1f}%"
            f"{'  within' if ok_keys else '  OUTSIDE'}"
        )
    print(f"  mean{'':<31}{mean_commands:>12,.0f}{'':>19}{mean_keys:>9,.0f}")
    for p in loads:
        # Keys without a partition's tag, or a client's own commands, sit on one node: they explain a skew.
        alone = {c: n for c, n in p.calls.items() if not any(c in o.calls for o in loads if o is not p)}
        if alone:
            ranked = sorted(alone.items(), key=lambda item: -item[1])
            print(f"  run on :{p.port} alone: " + ", ".join(f"{c} {n:,}" for c, n in ranked))
    print(
        f"  balance {'meets' if met else 'MISSES'} the target (every primary within ±{TARGET_DEVIATION_PCT:.0f}% "
        f"of the mean)"
    )
    return met


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report_per_turn(figures: dict[str, Figures], args: argparse.Namespace) -> None:
    cluster, single = figures["cluster"], figures["standalone"]
    print(f"\n2. Redis per turn (the {args.turns} turns of the load; cluster: summed over the primaries)")
    print(f"  {'':<38}{'cluster':>12}{'standalone':>12}{'ratio':>9}")
    rows = (
        ("Redis CPU per turn (µs)", "cpu_us_per_turn", ",.0f"),
        ("bytes per stored turn (used_memory)", "bytes_per_turn", ",.0f"),
        ("  less buffers and replication backlog", "bytes_per_turn_less_buffers", ",.0f"),
        ("load throughput (turns/s)", "turns_per_s", ",.1f"),
    )
    for label, attr, spec in rows:
        a, b = getattr(cluster, attr), getattr(single, attr)
        print(f"  {label:<38}{a:>12{spec}}{b:>12{spec}}{ratio(a, b):>9}")
    print("  stored includes the conversations' live feeds (a copy of each turn's events for 10 minutes)")


def report_latency(figures: dict[str, Figures], accepts: int) -> None:
    print(f"\n3. Accept latency (SDK wall time of {accepts} background creates each, one at a time, alternating; ms)")
    print(f"  {'':<12}{'p50':>9}{'p99':>9}")
    for name, f in figures.items():
        print(f"  {name:<12}{percentile(f.accept_ms, 50):>9.2f}{percentile(f.accept_ms, 99):>9.2f}")
    cluster, single = figures["cluster"].accept_ms, figures["standalone"].accept_ms
    print(
        f"  {'ratio':<12}{ratio(percentile(cluster, 50), percentile(single, 50)):>9}"
        f"{ratio(percentile(cluster, 99), percentile(single, 99)):>9}"
    )


def report_failures(figures: dict[str, Figures]) -> bool:
    """Prints every call that did not complete; True when there was none."""
    clean = True
    for name, f in figures.items():
        for what, count in f.failures.most_common():
            clean = False
            print(f"  FAILED on {name}: {count} x {what}")
    return clean


def run(args: argparse.Namespace, root: Path) -> int:
    figures = {"cluster": Figures(), "standalone": Figures()}
    env = {"TURNSTREAM_PARTITIONS": str(PARTITIONS)}
    (root / "cluster").mkdir()
    (root / "standalone").mkdir()
    with contextlib.ExitStack() as running:
        cluster = running.enter_context(LocalCluster())
        seed = ClusterSeed(cluster)
        running.callback(seed.client().close)
        single = running.enter_context(standalone(root / "standalone"))
        stacks = {
            "cluster": running.enter_context(
                running_stack(seed, root / "cluster", {**env, "TURNSTREAM_REDIS_CLUSTER": "true"})  # type: ignore[arg-type]
            ),
            "standalone": running.enter_context(
                running_stack(single, root / "standalone", {**env, "TURNSTREAM_REDIS_CLUSTER": "false"})
            ),
        }
        try:
            # Read once, before the stats are reset: CLUSTER NODES would count among the load's commands.
            primaries = cluster.primaries()
            ports = [port for port, _ in primaries]
            for port in ports:
                with node(port) as r:
                    r.config_resetstat()
            run_load(stacks["cluster"].base_url, args, ports, figures["cluster"])
            loads = primary_loads(primaries)
            run_load(stacks["standalone"].base_url, args, [single.port], figures["standalone"])
            accept_latency(stacks, figures, args.accepts)
        except BaseException:
            log_tails(stacks)
            raise
        if any(f.failures for f in figures.values()):
            log_tails(stacks)

    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    print(
        "Redis Cluster capacity: balance over the primaries, Redis per turn and accept latency beside one redis-server"
    )
    print(f"  command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"  redis:   {version}")
    print(
        f"  cluster: {len(primaries)} primaries with a replica each; standalone: one redis-server; "
        f"each with mock, API and 2 workers; {os.cpu_count()} CPUs"
    )
    print(
        f"\n1. Balance over the primaries ({args.conversations} conversations, {args.turns} turns, "
        f"{PARTITIONS} partitions)"
    )
    met = report_balance(loads)
    report_per_turn(figures, args)
    report_latency(figures, args.accepts)
    clean = report_failures(figures)
    return 0 if met and clean else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--accepts", type=int, default=ACCEPTS, help="background creates timed on each stack")
    parser.add_argument("--quick", action="store_true", help="200 turns over 100 conversations")
    args = parser.parse_args(argv)
    if args.quick:
        args.turns, args.conversations = 200, 100
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="turnstream-cluster-capacity-") as root:
        return run(args, Path(root))


if __name__ == "__main__":
    sys.exit(main())
