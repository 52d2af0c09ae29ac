"""What keys and limits add to a request: the same requests against an open API and one that checks keys.

Starts a private redis-server and two API processes on it, one with TURNSTREAM_AUTH=off and one with it
on, then sends the same sequence of requests to both, alternating request by request so both see the
same machine noise, and prints p50/p99 per request kind. No worker runs: the turns stay queued, so the
figures are the API's own path, not a worker competing for the same cores.

- read:   GET /v1/responses/{id}             (key lookup + requests-per-minute window)
- create: POST /v1/responses, background     (the same + a concurrent-turn slot + accounting fields)

    .venv/bin/python tests/benchmarks/auth_overhead.py [--requests 2000]

Not a pytest test: its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from measure import free_port

from shared.api_keys import KeyStore
from shared.redis_conn import connect
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]



def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests of each kind per API")
    args = parser.parse_args()
    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        raise SystemExit("redis-server is not on PATH")

    workdir = Path(tempfile.mkdtemp(prefix="turnstream-auth-bench-"))
    redis_port, open_port, keyed_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_"))}
    base_env.update({
        "TURNSTREAM_REDIS_URL": redis_url,
        "TURNSTREAM_MAX_QUEUE_DEPTH": "1000000",
    })
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (workdir / f"{name}.log").open("wb")
        procs.append(subprocess.Popen(argv, env={**base_env, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))

    cli = [sys.executable, "-c", "from shared.cli import main; main()"]
    try:
        spawn("redis", [redis_exe, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(workdir)], {})
        spawn("api-open", [*cli, "api"], {"TURNSTREAM_PORT": str(open_port), "TURNSTREAM_AUTH": "off"})
        spawn("api-keyed", [*cli, "api"], {"TURNSTREAM_PORT": str(keyed_port), "TURNSTREAM_AUTH": "on"})
        for port in (open_port, keyed_port):
            ready = f"http://127.0.0.1:{port}/readyz?exclude=workers"  # no workers: the API alone
            wait_until(lambda ready=ready: httpx.get(ready).status_code == 200, "API")
        secret = asyncio.run(_create_key(redis_url))
        clients = {
            "open": httpx.Client(base_url=f"http://127.0.0.1:{open_port}/v1", timeout=30),
            "keyed": httpx.Client(base_url=f"http://127.0.0.1:{keyed_port}/v1", timeout=30,
                                  headers={"Authorization": f"Bearer {secret}"}),
        }
        run(clients, args.requests)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


async def _create_key(redis_url: str) -> str:
    settings = Settings(redis_url=redis_url)
    redis = await connect(settings)
    try:
        # Limits far above what the run sends: the figures are the checks' cost, not their refusals.
        _, secret = await KeyStore(redis, settings).create("bench", rpm=10_000_000, max_concurrent=100_000)
        return secret
    finally:
        await redis.aclose()


def run(clients: dict[str, httpx.Client], n: int) -> None:
    body = {"model": "turnstream-mock", "input": "hi", "background": True}
    ids = {name: c.post("/responses", json=body).json()["id"] for name, c in clients.items()}
    kinds: dict[str, Callable[[str, httpx.Client], httpx.Response]] = {
        "read": lambda name, c: c.get(f"/responses/{ids[name]}"),
        "create": lambda name, c: c.post("/responses", json=body),
    }
    print(f"{n} requests of each kind per API, sequential, alternating open/keyed; no worker")
    print(f"{'request':<8} {'open p50':>9} {'keyed p50':>10} {'added p50':>10} "
          f"{'open p99':>9} {'keyed p99':>10} {'added p99':>10}   (ms)")
    for kind, send in kinds.items():
        timings: dict[str, list[float]] = {"open": [], "keyed": []}
        for i in range(n + n // 10):  # the first tenth warms connections and caches and is not counted
            order = ("open", "keyed") if i % 2 == 0 else ("keyed", "open")
            for name in order:
                started = time.perf_counter()
                response = send(name, clients[name])
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise SystemExit(f"{name} {kind}: HTTP {response.status_code} {response.text[:200]}")
                if i >= n // 10:
                    timings[name].append(elapsed)
        o50, k50 = statistics.median(timings["open"]), statistics.median(timings["keyed"])
        o99, k99 = percentile(timings["open"], 99), percentile(timings["keyed"], 99)
        print(f"{kind:<8} {o50:>9.2f} {k50:>10.2f} {k50 - o50:>+10.2f} {o99:>9.2f} {k99:>10.2f} {k99 - o99:>+10.2f}")


if __name__ == "__main__":
    main()
