"""Test stack: a real redis-server on a free port, and the service as separate processes.

Integration tests drive the API over HTTP with the official `openai` SDK; the workers reach the built-in
mock model over HTTP through the SDK too, so the production path runs end to end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from arq.connections import ArqRedis

from shared import keys
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings

pytest_plugins = ["tests.cluster_fixtures"]

ROOT = Path(__file__).resolve().parent.parent

# In-process apps built by tests (create_app(Settings(...))) run open, as `turnstream dev` does; tests of
# keys and projects turn them on explicitly (tests/integration/test_auth.py and its neighbours).
os.environ.setdefault("TURNSTREAM_AUTH", "off")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: object, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def start_redis(workdir: Path, port: int | None = None, *, aof: bool = False) -> RedisServer:
    """A redis-server of the tests' own; with `aof`, every write is fsynced, so a restart on the same port and
    directory keeps everything (the fault tests restart it)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH: integration tests need a real Redis (apt-get install redis-server)")
    port = port or free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence, "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, proc, workdir)
    wait_until(lambda: server.client().ping(), what="redis-server")
    return server


@dataclass
class Stack:
    redis: RedisServer
    api_url: str
    mock_url: str
    env: dict[str, str]
    logdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.api_url}/v1"

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-c", "from shared.cli import main; main()", *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, *, kill: bool = False) -> None:
        proc = self.procs.pop(name)
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait_live_worker(self, timeout: float = 30) -> None:
        """Until the API counts a live worker: creates that wait for their turn are refused before that."""
        wait_until(lambda: httpx.get(f"{self.api_url}/readyz").status_code == 200, timeout, "a live worker")

    def worker_pids(self) -> list[str]:
        return [n for n in self.procs if n.startswith("worker")]


TEST_SETTINGS = {
    "TURNSTREAM_AGENTS": str(ROOT / "tests" / "agents_for_tests.py"),
    "TURNSTREAM_MOCK_TOKEN_DELAY_MS": "2",
    "TURNSTREAM_MAX_INPUT_BYTES": "65536",
    "TURNSTREAM_MAX_OUTPUT_BYTES": "20000",
    "TURNSTREAM_LEASE_S": "2",
    "TURNSTREAM_SSE_KEEPALIVE_S": "1",
    "TURNSTREAM_FIRST_TOKEN_TIMEOUT_S": "10",
    "TURNSTREAM_BODY_READ_TIMEOUT_S": "2",
    "TURNSTREAM_MOCK_CONTEXT_TOKENS": "4000",
    # Shorter than the first backoff (0.25-0.5 s): a failing upstream fails the turn at once, as these tests
    # expect; tests/integration/test_upstream_retries.py runs stacks with real budgets.
    "TURNSTREAM_UPSTREAM_RETRY_BUDGET_S": "0.2",
}


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="turnstream-tests-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def redis_server(tmp_root: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_root)
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=10)


# The database of the suite's redis-server that unit tests of Lua scripts flush and use; the session stack
# runs on database 0.
SCRIPTS_DB = 9


@pytest.fixture(params=["fakeredis", "redis-server"])
async def script_redis(request: pytest.FixtureRequest) -> AsyncIterator[ArqRedis]:
    """An empty Redis for a test of Lua scripts, once in-process (as `turnstream dev` runs them) and once on a
    real redis-server, whose Lua (cjson, number conversions) is the one production runs."""
    if request.param == "fakeredis":
        yield EmbeddedRedis().client(Settings())
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = ArqRedis(host="127.0.0.1", port=server.port, db=SCRIPTS_DB)
    await client.flushdb()
    yield client
    await client.aclose()


@contextlib.contextmanager
def running_stack(
    server: RedisServer, root: Path, env: dict[str, str], workers: int = 2, *, kill_at_end: bool = False
) -> Iterator[Stack]:
    """mock, `workers` workers and the API as processes on `server`, with the test settings plus `env`; their
    logs are printed if start-up fails, and every process is stopped (or killed) at the end."""
    api_port, mock_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_", "OTEL_"))}
    base.update(TEST_SETTINGS)
    base.update(
        {
            "TURNSTREAM_REDIS_URL": server.url,
            "TURNSTREAM_HOST": "127.0.0.1",
            "TURNSTREAM_PORT": str(api_port),
            "TURNSTREAM_MOCK_PORT": str(mock_port),
            "OPENAI_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
            "OPENAI_API_KEY": "test-key",
            "PYTHONUNBUFFERED": "1",
            # Open, like a deployment behind an authenticating gateway; tests/integration/test_auth.py covers keys.
            "TURNSTREAM_AUTH": "off",
            **env,
        }
    )
    logdir = root / "logs"
    logdir.mkdir(exist_ok=True)
    s = Stack(server, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{mock_port}/v1", base, logdir)
    try:
        s.spawn("mock", "mock")
        for n in range(1, workers + 1):
            s.spawn(f"worker-{n}", "worker")
        s.spawn("api", "api")
        # The API itself; with workers=0 its full readiness (a live worker) never comes.
        wait_until(lambda: httpx.get(f"{s.api_url}/readyz?exclude=workers").status_code == 200, 30, "the API")
        wait_until(lambda: httpx.get(f"{s.mock_url}/models").status_code == 200, 30, "the mock model")
        if workers:
            wait_until(lambda: server.client().hlen(keys.AGENTS) > 0, 30, "workers")
            s.wait_live_worker()
        yield s
    except BaseException:
        for log in sorted(logdir.iterdir()):
            sys.stderr.write(f"--- {log.name} ---\n{log.read_text()[-4000:]}\n")
        raise
    finally:
        for name in list(s.procs):
            s.stop(name, kill=kill_at_end)


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer, tmp_root: Path) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_root, {}) as s:
        yield s
