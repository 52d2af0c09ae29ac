"""What TURNSTREAM_REDIS_WAIT_REPLICAS=1 costs a turn's accept: the accept script alone, then followed by WAIT 1
on the same connection, against a local primary with one replica; interleaved, so both see the same machine.

    python tests/benchmarks/replica_wait.py [--accepts 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import ids, metrics
from shared.lua import Durability
from shared.models import TurnRequest
from shared.settings import Settings
from shared.turn_accept import NewTurn, TurnAcceptor
from shared.turn_state import Retention
from tests.benchmarks.measure import free_port, percentile


def _server(workdir: Path, *extra: str) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server must be on PATH"
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
         *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return port, proc


def _turn() -> NewTurn:
    req = TurnRequest(response_id=ids.response_id(), model="turnstream-mock", input=[])
    return NewTurn(req.response_id, req.project, None, "wait", {"status": "queued", "request": req.model_dump_json()},
                   [("response.created", '{"type":"response.created"}')])


async def _run(accepts: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "p").mkdir()
        (root / "r").mkdir()
        primary_port, primary = _server(root / "p")
        replica_port, replica = _server(root / "r", "--replicaof", "127.0.0.1", str(primary_port))
        try:
            redis = ArqRedis(host="127.0.0.1", port=primary_port)
            for _ in range(100):  # until the server listens
                try:
                    await redis.ping()
                    break
                except RedisConnectionError:
                    await asyncio.sleep(0.05)
            on_replica = ArqRedis(host="127.0.0.1", port=replica_port)
            while True:  # until the replica's first sync is over: WAIT counts only a replica that streams
                try:
                    if (await on_replica.info("replication")).get("master_link_status") == "up":
                        break
                except RedisConnectionError:
                    pass
                await asyncio.sleep(0.05)
            await on_replica.aclose()
            settings = Settings(max_queue_depth=10**9)
            retention = Retention.from_settings(settings)
            plain = TurnAcceptor(redis, retention, settings.queue_name, settings.max_queue_depth)
            waiting = TurnAcceptor(redis, retention, settings.queue_name, settings.max_queue_depth, Durability(1, 100))
            timings: dict[str, list[float]] = {"no wait": [], "WAIT 1": []}
            for _ in range(50):  # warm up both paths (scripts loaded, connections open)
                await plain.accept(_turn())
                await waiting.accept(_turn())
            for _ in range(accepts):
                for name, acceptor in (("no wait", plain), ("WAIT 1", waiting)):
                    turn = _turn()
                    start = time.perf_counter()
                    assert await acceptor.accept(turn) is None
                    timings[name].append((time.perf_counter() - start) * 1000)
            print(f"accept latency, {accepts} each, primary + 1 replica on this machine (ms):")
            for name, values in timings.items():
                print(f"  {name:8}  p50 {percentile(values, 50):6.3f}  p99 {percentile(values, 99):6.3f}")
            print(f"  writes short of the replica: {metrics.REDIS_WAIT_SHORT._value.get():.0f}")
            ratio = percentile(timings["WAIT 1"], 50) / percentile(timings["no wait"], 50)
            print(f"  WAIT 1 / no wait, p50: {ratio:.2f}x")
            await redis.aclose()
        finally:
            for proc in (primary, replica):
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accepts", type=int, default=2000)
    asyncio.run(_run(parser.parse_args().accepts))


if __name__ == "__main__":
    main()
