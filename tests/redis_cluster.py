"""A real Redis Cluster on loopback for tests: redis-server processes (three primaries with a replica each by
default) joined by `redis-cli --cluster create`, and the faults the cluster tests need: kill -9 a primary, wait
for its replica's promotion, restart the dead node so it rejoins as a replica.

    with LocalCluster() as cluster:
        RedisCluster.from_url(cluster.url).set("k", "v")
        port = cluster.primary_for_slot(key_slot(b"k"))
        cluster.kill_primary(port)
        cluster.wait_promoted(port)
        cluster.restart(port)
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

from tests.conftest import free_port, wait_until

SLOTS = 16384
# Short, so a killed primary is marked failed and replaced in a few seconds instead of Redis' default 15 s.
NODE_TIMEOUT_MS = 2000
# Flags of a node the cluster does not currently count on: suspected or agreed failed, or not yet joined.
_NOT_HEALTHY = frozenset({"fail", "fail?", "handshake", "noaddr"})

SlotRange = tuple[int, int]


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES, as one node sees the cluster."""

    id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None  # the primary a replica follows
    slots: tuple[SlotRange, ...]  # inclusive ranges; slots being migrated are left out

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def healthy(self) -> bool:
        return not self.flags & _NOT_HEALTHY

    def owns(self, lo: int, hi: int) -> bool:
        return any(a <= lo and hi <= b for a, b in self.slots)


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    """`<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...` per line."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        node_id, address, flags, primary = fields[:4]
        slots: list[SlotRange] = []
        for token in fields[8:]:
            if token.startswith("["):  # "[slot->-id]" / "[slot-<-id]": a migration under way
                continue
            lo, _, hi = token.partition("-")
            slots.append((int(lo), int(hi or lo)))
        port = int(address.split("@")[0].rpartition(":")[2])
        nodes.append(
            ClusterNode(node_id, port, frozenset(flags.split(",")), None if primary == "-" else primary, tuple(slots))
        )
    return nodes


@dataclass
class LocalCluster:
    """`primary_count` primaries with `replicas_per_primary` replicas each, started on construction and ready
    (every node agreeing, all 16384 slots served, every replica linked) when it returns. `stop()` or leaving
    the `with` block kills the processes and removes their directory."""

    primary_count: int = 3
    replicas_per_primary: int = 1
    server_args: tuple[str, ...] = ()
    ports: list[int] = field(init=False, default_factory=list)
    root: Path = field(init=False)
    _bus_ports: dict[int, int] = field(init=False, default_factory=dict)
    _procs: dict[int, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)
    _clients: dict[int, redis.Redis] = field(init=False, default_factory=dict)
    _lost_slots: dict[int, tuple[SlotRange, ...]] = field(init=False, default_factory=dict)
    _server: str = field(init=False)
    _cli: str = field(init=False)

    def __post_init__(self) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("a local Redis Cluster needs redis-server and redis-cli on PATH (apt-get install redis)")
        self._server, self._cli = server, cli
        self.root = Path(tempfile.mkdtemp(prefix="turnstream-cluster-"))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        taken: set[int] = set()
        for _ in range(self.primary_count * (1 + self.replicas_per_primary)):
            port, bus = self._unused_port(taken), self._unused_port(taken)
            self.ports.append(port)
            # An explicit bus port: the default (port + 10000) overflows for ports above 55535, and free
            # ports come from the ephemeral range (32768-60999 on Linux).
            self._bus_ports[port] = bus
            (self.root / str(port)).mkdir()
            self._spawn(port)
        for port in self.ports:
            wait_until(self.client(port).ping, 10, f"redis-server on {port}")
        created = subprocess.run(
            [self._cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}{self._logs()}")
        self._wait_whole(30, "the new cluster")

    @staticmethod
    def _unused_port(taken: set[int]) -> int:
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    def _spawn(self, port: int) -> None:
        # Its own directory per node: Redis 7 keeps the AOF in `appendonlydir/` under --dir, which nodes
        # sharing a directory would overwrite.
        command = [
            self._server, "--port", str(port), "--cluster-port", str(self._bus_ports[port]),
            "--bind", "127.0.0.1", "--dir", str(self.root / str(port)),
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica promotes however long it has been out of touch: tests kill primaries at will.
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-reads-when-down", "no",
            "--appendonly", "yes", "--save", "",
            # A replica's full sync starts at once, not after Redis' 5 s wait for more replicas to share it.
            "--repl-diskless-sync-delay", "0",
            *self.server_args,
        ]  # fmt: skip
        with (self.root / str(port) / "redis.log").open("ab") as log:
            self._procs[port] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def _logs(self) -> str:
        tails = [f"--- {p} ---\n{(self.root / str(p) / 'redis.log').read_text()[-2000:]}" for p in self.ports]
        return "\n" + "\n".join(tails)

    # --- reading the cluster ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A seed for cluster clients: the first node still running."""
        return f"redis://127.0.0.1:{self.live_ports()[0]}"

    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}" for p in self.ports]

    def live_ports(self) -> list[int]:
        return [p for p in self.ports if p in self._procs and self._procs[p].poll() is None]

    def client(self, port: int) -> redis.Redis:
        """A plain (not cluster-aware) client of one node, decoding replies to str."""
        if port not in self._clients:
            self._clients[port] = redis.Redis(
                host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
            )
        return self._clients[port]

    def nodes(self, port: int | None = None) -> list[ClusterNode]:
        """The cluster as node `port` (by default the first running one) sees it."""
        return parse_cluster_nodes(self.client(port or self.live_ports()[0]).execute_command("CLUSTER", "NODES"))

    def primaries(self) -> list[tuple[int, list[SlotRange]]]:
        """(port, slot ranges) of every primary serving slots, in slot order. A killed primary is listed until
        its replica has taken its slots over."""
        owners = [(n.port, list(n.slots)) for n in self.nodes() if n.is_primary and n.slots]
        return sorted(owners, key=lambda owner: owner[1][0])

    def primary_for_slot(self, slot: int) -> int:
        for port, ranges in self.primaries():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return port
        raise LookupError(f"no primary serves slot {slot}")

    # --- faults -----------------------------------------------------------------------------------------

    def kill_primary(self, port: int) -> None:
        """kill -9 the primary on `port`, without waiting for anything else."""
        node = next((n for n in self.nodes() if n.port == port), None)
        if node is None or not node.is_primary or not node.slots:
            raise ValueError(f"{port} is not a primary serving slots")
        self._lost_slots[port] = node.slots
        self._procs[port].kill()
        self._procs[port].wait(timeout=10)

    def wait_promoted(self, old_port: int, timeout: float = 30) -> int:
        """Until every running node agrees that one other running primary serves all the slots the killed
        primary on `old_port` served, and reports cluster_state:ok; returns that primary's port."""
        lost = self._lost_slots[old_port]
        successor: list[int] = []

        def promoted() -> bool:
            live = self.live_ports()
            owners = set()
            for port in live:
                if not self._cluster_ok(port):
                    return False
                nodes = self.nodes(port)
                owners |= {n.port for n in nodes if n.is_primary and all(n.owns(lo, hi) for lo, hi in lost)}
            if len(owners) != 1 or not owners <= set(live) - {old_port}:
                return False
            successor[:] = owners
            return True

        wait_until(promoted, timeout, f"a replica to take over the slots of {old_port}")
        return successor[0]

    def restart(self, port: int, timeout: float = 30) -> None:
        """Start the killed node on `port` again, with its own config file and directory, and wait until the
        cluster is whole: a primary that was replaced comes back as a replica of its successor."""
        if self._procs[port].poll() is None:
            raise ValueError(f"{port} is still running")
        if (stale := self._clients.pop(port, None)) is not None:
            stale.close()
        self._spawn(port)
        self._wait_whole(timeout, f"{port} to rejoin")

    def move_slot(self, slot: int, to_port: int, timeout: float = 30) -> None:
        """Reshards one slot, keys and all, to the primary on `to_port`, as `redis-cli --cluster reshard` does:
        the target imports, the source migrates its keys (clients meanwhile get ASK), then every primary is
        told the slot's new owner (clients then get MOVED)."""
        source = self.primary_for_slot(slot)
        src, dst = self.client(source), self.client(to_port)
        src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while moving := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *moving)
        for port, _ in self.primaries():
            self.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        wait_until(lambda: self.primary_for_slot(slot) == to_port, timeout, f"slot {slot} on {to_port}")
        self._wait_whole(timeout, f"slot {slot} moved")

    # --- readiness --------------------------------------------------------------------------------------

    def _cluster_ok(self, port: int) -> bool:
        info = self.client(port).execute_command("CLUSTER", "INFO")
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        return fields["cluster_state"] == "ok" and fields["cluster_slots_ok"] == str(SLOTS)

    def _whole(self) -> bool:
        """Every running node serves the whole slot space, agrees with the others on which primary serves
        which slots, and sees every running node healthy: a primary with slots, or a replica whose link to
        its primary is up."""
        live = self.live_ports()
        slot_maps = set()
        for port in live:
            if not self._cluster_ok(port):
                return False
            seen = {n.port: n for n in self.nodes(port)}
            if len(seen) != len(self.ports):
                return False
            slot_maps.add(frozenset((n.port, n.slots) for n in seen.values() if n.is_primary and n.slots))
            for other in live:
                node = seen[other]
                if not node.healthy or (node.is_primary and not node.slots):
                    return False
                # ROLE of a replica: ["slave", primary host, primary port, link state, offset].
                if not node.is_primary and self.client(other).execute_command("ROLE")[3] != "connected":
                    return False
        return len(slot_maps) == 1

    def _wait_whole(self, timeout: float, what: str) -> None:
        try:
            wait_until(self._whole, timeout, what)
        except TimeoutError as e:
            raise TimeoutError(f"timed out waiting for {what}{self._logs()}") from e

    # --- teardown ---------------------------------------------------------------------------------------

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
