"""A second deployment that checks keys: two API processes and a worker sharing one Redis database.

It runs on database 1 of the session's redis-server, beside the open shared stack on database 0 (and its
mock model), so its queue, keys and counters are its own and tests can count what it stores.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
from openai import OpenAI

from shared import keys
from shared.api_keys import ApiKey, KeyStore
from shared.redis_conn import connect
from shared.settings import Settings
from tests.conftest import ROOT, Stack, free_port, wait_until

M = "turnstream-mock"
KEYED_DB = 1


@dataclass
class KeyedStack:
    stack: Stack
    redis_url: str
    api_urls: list[str]
    env: dict[str, str]
    secrets: list[str] = field(default_factory=list)  # every secret issued, for the plaintext scan
    worker_generation: int = 0

    def base_url(self, node: int = 0) -> str:
        return f"{self.api_urls[node]}/v1"

    def client(self, secret: str, node: int = 0) -> OpenAI:
        return OpenAI(base_url=self.base_url(node), api_key=secret, max_retries=0, timeout=30)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from shared.cli import main; main()", *args],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def cli_key(self, project: str, *options: str) -> str:
        """A key made as the README says: `turnstream keys create ... | tail -1`."""
        done = self.cli("keys", "create", "--project", project, *options)
        assert done.returncode == 0, done.stderr
        secret = done.stdout.splitlines()[-1]
        self.secrets.append(secret)
        return secret

    def key(self, project: str, *, rpm: int = 100_000, max_concurrent: int = 20) -> tuple[ApiKey, str]:
        """A key made straight through the store the CLI uses (quicker than a process per key)."""
        key, secret = asyncio.run(self._store(lambda s: s.create(project, "", rpm, max_concurrent)))
        self.secrets.append(secret)
        return key, secret

    def listed(self) -> list[ApiKey]:
        return list(asyncio.run(self._store(lambda s: s.list_keys())))

    def revoke(self, secret_or_id: str) -> None:
        assert asyncio.run(self._store(lambda s: s.revoke(secret_or_id))) is not None

    async def _store(self, action: Any) -> Any:
        settings = Settings(redis_url=self.redis_url)
        client = await connect(settings)
        try:
            return await action(KeyStore(client, settings))
        finally:
            await client.aclose()

    def spawn_worker(self) -> str:
        self.worker_generation += 1
        name = f"keyed-worker-{self.worker_generation}"
        self.stack.spawn(name, "worker", env=self.env)
        return name

    def kill_worker(self) -> None:
        """SIGKILL: the worker gets no chance to requeue or release anything."""
        self.stack.stop(f"keyed-worker-{self.worker_generation}", kill=True)

    def spawn_api(self, name: str, env: dict[str, str] | None = None) -> str:
        port = free_port()
        self.stack.spawn(name, "api", env={**self.env, "TURNSTREAM_PORT": str(port), **(env or {})})
        return f"http://127.0.0.1:{port}"


def http(url: str, secret: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


@pytest.fixture(scope="session")
def keyed(stack: Stack) -> Iterator[KeyedStack]:
    url = stack.redis.url.rsplit("/", 1)[0] + f"/{KEYED_DB}"
    env = {
        **stack.env,
        "TURNSTREAM_REDIS_URL": url,
        "TURNSTREAM_AUTH": "on",
        "TURNSTREAM_QUEUE_NAME": "turnstream:keyed-queue",
    }
    k = KeyedStack(stack, url, [], env)
    names = ["keyed-api-a", "keyed-api-b"]
    k.api_urls = [k.spawn_api(name) for name in names]
    k.spawn_worker()
    try:
        for api in k.api_urls:
            wait_until(lambda api=api: httpx.get(f"{api}/readyz").status_code == 200, 30, "a keyed API")
        with k.redis() as r:
            wait_until(lambda: r.hexists(keys.AGENTS, M), 30, "the keyed worker")
        yield k
    finally:
        for name in [*names, f"keyed-worker-{k.worker_generation}"]:
            if name in stack.procs:
                stack.stop(name)
