"""TURNSTREAM_REDIS_WAIT_REPLICAS: an accepted turn and a committed answer are on a replica before the service
answers for them, so a primary that dies right after keeps them; a replica that lags is counted, not fatal."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from openai import OpenAI

from shared import keys
from tests.conftest import RedisServer, Stack, free_port, wait_until
from tests.integration.conftest import wait_for
from tests.integration.own_stack import own_stack


def _start_replica(workdir: Path, primary: RedisServer) -> RedisServer:
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe is not None
    replica_dir = workdir / f"replica-{port}"
    replica_dir.mkdir()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(replica_dir), "--replicaof", "127.0.0.1", str(primary.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    replica = RedisServer(port, proc, replica_dir)
    wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", what="the replica's link")
    return replica


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, RedisServer]]:
    root = tmp_path_factory.mktemp("replication")
    # Long enough that a loaded machine's replica still acknowledges in time: the first test counts on it.
    env = {"TURNSTREAM_REDIS_WAIT_REPLICAS": "1", "TURNSTREAM_REDIS_WAIT_TIMEOUT_MS": "3000"}
    with own_stack(root, env, workers=1) as stack:
        replica = _start_replica(root, stack.redis)
        try:
            yield stack, replica
        finally:
            replica.proc.kill()
            replica.proc.wait(timeout=10)


def _short_writes(stack: Stack) -> float:
    text = httpx.get(f"{stack.api_url}/metrics").text
    match = re.search(r"^turnstream_redis_wait_short_total (\S+)$", text, re.M)
    assert match is not None, "the API exports turnstream_redis_wait_short_total"
    return float(match.group(1))


def test_an_accepted_turn_and_its_answer_are_on_the_replica_when_the_service_answers(
    replicated: tuple[Stack, RedisServer],
) -> None:
    stack, replica = replicated
    on_replica = replica.client()
    with OpenAI(base_url=stack.base_url, api_key="test-key") as client:
        short_before = _short_writes(stack)
        for _ in range(5):
            created = client.responses.create(model="turnstream-mock", input="Count to 3.", background=True)
            # Read at once, before anything else reaches the replica: the accept waited for it.
            assert on_replica.hget(keys.response(created.id), "status") is not None
            done = wait_for(client, created.id, {"completed"})
            assert on_replica.hget(keys.response(done.id), "status") == b"completed"
        assert _short_writes(stack) == short_before


def test_a_replica_that_stops_acknowledging_is_counted_and_turns_still_complete(
    replicated: tuple[Stack, RedisServer],
) -> None:
    stack, replica = replicated
    primary: redis.Redis = stack.redis.client()
    short_before = _short_writes(stack)
    replica.client().execute_command("REPLICAOF", "NO", "ONE")  # the primary is left with no replica
    try:
        wait_until(lambda: primary.info("replication")["connected_slaves"] == 0, what="the replica to leave")
        with OpenAI(base_url=stack.base_url, api_key="test-key") as client:
            created = client.responses.create(model="turnstream-mock", input="Count to 3.", background=True)
            assert wait_for(client, created.id, {"completed"}).status == "completed"
        # The accept's WAIT (the API's count) came back short, and did not fail the turn.
        assert _short_writes(stack) >= short_before + 1
    finally:
        replica.client().execute_command("REPLICAOF", "127.0.0.1", str(stack.redis.port))
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", what="relink")
