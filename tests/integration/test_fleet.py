"""Fleet-aware readiness: workers heartbeat, `/readyz` counts the live ones and is a clear 503 without any,
and `turnstream status` shows each worker and the queue."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from shared import keys
from tests.conftest import ROOT, Stack, wait_until
from tests.integration.conftest import wait_for
from tests.integration.own_stack import own_stack

# Beats every 0.2 s, dead after 1 s without one: the test sees a killed worker leave quickly.
FAST_BEATS = {"TURNSTREAM_WORKER_HEARTBEAT_S": "0.2", "TURNSTREAM_WORKER_HEARTBEAT_TTL_S": "1"}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Stack]:
    with own_stack(tmp_path, FAST_BEATS, workers=1) as stack:
        yield stack


def _status(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from shared.cli import main; main()", "status", *args],
        env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def _ready(stack: Stack, query: str = "") -> httpx.Response:
    return httpx.get(f"{stack.api_url}/readyz{query}", timeout=10)


def test_readyz_counts_the_live_workers_and_their_running_turns(fleet: Stack) -> None:
    assert _ready(fleet).json() == {"status": "ok", "workers": {"live": 1, "running_turns": 0}}
    with OpenAI(base_url=fleet.base_url, api_key="x", max_retries=0) as client:
        long = client.responses.create(model="turnstream-mock", input="count to 400 [delay=25ms]", background=True)
        wait_for(client, long.id, {"in_progress"})
        wait_until(lambda: _ready(fleet).json()["workers"]["running_turns"] == 1, 10, "the running turn's beat")
        status = json.loads(_status(fleet, "--json").stdout)
        assert [w["running"] for w in status["workers"]] == [1]
        client.responses.cancel(long.id)


def test_status_prints_each_worker_and_the_queue(fleet: Stack) -> None:
    done = _status(fleet)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "workers: 1 alive on queue turnstream:queue"
    assert lines[1].split() == ["ID", "HOST", "RUNNING", "LAST", "HEARTBEAT"]
    worker_id, host, running, ago, *_ = lines[2].split()
    assert worker_id.startswith(host) and running == "0/50" and ago.endswith("s")
    assert lines[3] == "queue: 0 waiting, oldest wait 0.0s; 0 running"
    parsed: dict[str, Any] = json.loads(_status(fleet, "--json").stdout)
    assert parsed["workers"][0]["id"] == worker_id and parsed["waiting"] == 0
    assert 0 <= parsed["workers"][0]["last_heartbeat_s"] < 1


def test_a_stopped_worker_leaves_at_once_and_readyz_says_why(fleet: Stack) -> None:
    fleet.stop("worker-1")  # SIGTERM: the worker removes its own heartbeat
    r = _ready(fleet)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    error = r.json()["error"]
    assert error["code"] == "no_live_workers" and error["type"] == "server_error"
    assert "turnstream:queue" in error["message"] and "turnstream worker" in error["message"]
    # The API node itself can still serve: the probe that keeps it behind the load balancer says so.
    assert _ready(fleet, "?exclude=workers").json() == {"status": "ok"}
    done = _status(fleet)
    assert done.returncode == 1
    assert done.stdout.startswith("workers: none alive on queue turnstream:queue")


def test_a_killed_worker_is_dropped_once_its_heartbeat_expires(fleet: Stack) -> None:
    rds = fleet.redis.client()
    (worker_id,) = rds.zrange(keys.WORKERS, 0, -1)
    fleet.stop("worker-1", kill=True)  # no chance to say goodbye
    wait_until(lambda: _ready(fleet).status_code == 503, 10, "the heartbeat to expire")
    assert rds.zrange(keys.WORKERS, 0, -1) == []  # the reader pruned the dead id
    fleet.spawn("worker-2", "worker")
    wait_until(lambda: _ready(fleet).status_code == 200, 30, "the new worker")
    assert rds.zrange(keys.WORKERS, 0, -1) != [worker_id]


def test_readyz_rejects_an_unknown_check(fleet: Stack) -> None:
    r = _ready(fleet, "?exclude=redis")
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("exclude")


def test_status_without_redis_names_the_setting(tmp_path: Path, fleet: Stack) -> None:
    env = {**fleet.env, "TURNSTREAM_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run(
        [sys.executable, "-c", "from shared.cli import main; main()", "status"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "TURNSTREAM_REDIS_URL" in done.stderr and "Traceback" not in done.stderr
