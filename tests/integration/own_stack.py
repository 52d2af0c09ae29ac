"""A stack of its own (redis-server, mock, API, workers as processes) for tests that set worker settings
or kill processes, so they disturb neither the session's shared stack nor each other."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from shared import keys
from tests.conftest import TEST_SETTINGS, Stack, free_port, start_redis, wait_until


@contextlib.contextmanager
def own_stack(root: Path, env: dict[str, str], workers: int = 1, *, aof: bool = False) -> Iterator[Stack]:
    server = start_redis(root, aof=aof)
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
            "TURNSTREAM_AUTH": "off",  # one open project; tests/integration/test_auth.py covers keys
            **env,
        }
    )
    (root / "logs").mkdir(exist_ok=True)
    stack = Stack(server, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{mock_port}/v1", base, root / "logs")
    try:
        stack.spawn("mock", "mock")
        for n in range(1, workers + 1):
            stack.spawn(f"worker-{n}", "worker")
        stack.spawn("api", "api")
        wait_until(lambda: httpx.get(f"{stack.api_url}/readyz").status_code == 200, 30, "the API")
        wait_until(lambda: httpx.get(f"{stack.mock_url}/models").status_code == 200, 30, "the mock model")
        if workers:
            wait_until(lambda: server.client().hlen(keys.AGENTS) > 0, 30, "workers")
        yield stack
    except BaseException:
        for log in sorted((root / "logs").iterdir()):
            sys.stderr.write(f"--- {log.name} ---\n{log.read_text()[-4000:]}\n")
        raise
    finally:
        for name in list(stack.procs):
            stack.stop(name, kill=True)
        stack.redis.proc.terminate()  # the stack's current server: a test may have restarted it
        stack.redis.proc.wait(timeout=10)
