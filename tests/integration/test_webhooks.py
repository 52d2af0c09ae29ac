"""Signed webhooks end to end: the CLI registers endpoints, real receivers verify every delivery with the
Standard Webhooks library, one fails twice first, and a worker dies between a commit and its delivery."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared import keys
from tests.conftest import ROOT, Stack, free_port, wait_until
from tests.integration.conftest import wait_for
from tests.integration.own_stack import own_stack

CLIENT_TOOLS = [{"type": "function", "name": "lookup_order", "parameters": {"type": "object", "properties": {}}}]


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    verified: dict[str, Any] | None


@dataclass
class Receiver:
    """An endpoint on this machine: answers 500 to the first `failures` requests, verifies the rest."""

    failures: int = 0
    secret: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            if len(self.deliveries) < self.failures:
                self.deliveries.append(Delivery(headers, body, None))
                return 500
            try:
                verified = Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError:
                verified = None
            self.deliveries.append(Delivery(headers, body, verified))
            return 204 if verified is not None else 400

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [d.verified for d in self.deliveries if d.verified is not None]

    def for_response(self, response_id: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if json.loads(d.body)["data"]["id"] == response_id]


class ReceiverServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.receivers: dict[str, Receiver] = {}
        super().__init__(("127.0.0.1", free_port()), _Handler)

    def url(self, name: str, receiver: Receiver) -> str:
        self.receivers[name] = receiver
        return f"http://127.0.0.1:{self.server_port}/{name}"


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        receiver = self.server.receivers[self.path.strip("/")]
        self.send_response(receiver.handle({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def receivers() -> Iterator[ReceiverServer]:
    server = ReceiverServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hook_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("webhooks")
    env = {
        "TURNSTREAM_WEBHOOK_POLL_S": "0.05",
        "TURNSTREAM_WEBHOOK_RETRY_DELAYS_S": "[0.2, 0.2, 0.2]",
        "TURNSTREAM_WEBHOOK_TIMEOUT_S": "2",
    }
    with own_stack(root, env) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(hook_stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=hook_stack.base_url, api_key="k", max_retries=0, timeout=30) as c:
        yield c


def cli(stack: Stack, *args: str, redis: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in stack.env.items() if redis or k != "TURNSTREAM_REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-c", "from shared.cli import main; main()", "webhooks", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=30,
    )


def add_endpoint(stack: Stack, url: str, *events: str) -> tuple[str, str]:
    """Registers an endpoint with the CLI; returns its id and the secret the CLI printed last."""
    added = cli(stack, "add", "--url", url, *(("--events", *events) if events else ()))
    assert added.returncode == 0, added.stderr
    lines = added.stdout.strip().splitlines()
    return lines[0].split()[1], lines[-1]


@pytest.fixture
def endpoint(hook_stack: Stack, receivers: ReceiverServer, request: pytest.FixtureRequest) -> Iterator[Receiver]:
    """A receiver registered for every event, removed (through the CLI) after the test."""
    receiver = Receiver(failures=getattr(request, "param", 0))
    endpoint_id, receiver.secret = add_endpoint(hook_stack, receivers.url(request.node.name, receiver))
    yield receiver
    assert cli(hook_stack, "remove", endpoint_id).returncode == 0


def test_cli_adds_lists_and_removes_endpoints(hook_stack: Stack) -> None:
    added = cli(hook_stack, "add", "--url", "https://example.invalid/hook", "--events", "response.failed")
    assert added.returncode == 0, added.stderr
    endpoint_id, secret = added.stdout.split()[1], added.stdout.strip().splitlines()[-1]
    assert endpoint_id.startswith("we_") and secret.startswith("whsec_")

    listed = cli(hook_stack, "list")
    assert f"{endpoint_id}  https://example.invalid/hook  response.failed" in listed.stdout
    assert "whsec_" not in listed.stdout
    assert cli(hook_stack, "list", "--project", "other").stdout == ""

    assert cli(hook_stack, "remove", endpoint_id).stdout.strip() == f"removed {endpoint_id}"
    again = cli(hook_stack, "remove", endpoint_id)
    assert again.returncode == 1 and "no endpoint" in again.stderr
    assert endpoint_id not in cli(hook_stack, "list").stdout


def test_cli_refuses_bad_input_with_one_line(hook_stack: Stack) -> None:
    bad_url = cli(hook_stack, "add", "--url", "not-a-url")
    assert bad_url.returncode == 2 and bad_url.stderr.strip().startswith("turnstream webhooks: the webhook URL")
    no_redis = cli(hook_stack, "list", redis=False)
    assert no_redis.returncode == 2 and "TURNSTREAM_REDIS_URL" in no_redis.stderr


def test_each_way_a_turn_ends_is_delivered_signed_once(client: OpenAI, endpoint: Receiver) -> None:
    completed = client.responses.create(model="plain", input="hello")
    failed = client.responses.create(model="plain", input="[fail] hello")
    incomplete = client.responses.create(model="plain", input="count to 50", max_output_tokens=5)
    waiting = client.responses.create(model="turnstream-mock", input="call lookup_order({})", tools=CLIENT_TOOLS)
    running = client.responses.create(model="plain", input="[delay=50ms] count to 100", background=True)
    wait_for(client, running.id, {"in_progress"})
    cancelled = client.responses.cancel(running.id)
    assert [r.status for r in (completed, failed, incomplete, waiting, cancelled)] == [
        "completed", "failed", "incomplete", "completed", "cancelled"
    ]
    expected = {
        (completed.id, "response.completed"), (failed.id, "response.failed"),
        (incomplete.id, "response.incomplete"), (waiting.id, "response.completed"),
        (waiting.id, "response.requires_action"), (cancelled.id, "response.cancelled"),
    }

    wait_until(lambda: len(endpoint.accepted()) >= len(expected), 15, "the deliveries")
    time.sleep(0.3)  # time for a duplicate to show up, if there were one

    accepted = endpoint.accepted()
    assert sorted((e["data"]["id"], e["type"]) for e in accepted) == sorted(expected)
    assert all(d.verified is not None for d in endpoint.deliveries)
    assert len({e["id"] for e in accepted}) == len(expected)
    assert all(e["object"] == "event" and e["id"].startswith("evt_") for e in accepted)


@pytest.mark.parametrize("endpoint", [2], indirect=True)
def test_a_receiver_failing_twice_gets_one_verified_delivery(client: OpenAI, endpoint: Receiver) -> None:
    response = client.responses.create(model="plain", input="hello")

    wait_until(lambda: endpoint.accepted(), 15, "the delivery")
    time.sleep(0.5)

    attempts = endpoint.for_response(response.id)
    assert [d.verified is not None for d in attempts] == [False, False, True]
    assert len({d.headers["webhook-id"] for d in attempts}) == 1
    assert len({d.body for d in attempts}) == 1
    assert endpoint.accepted() == [json.loads(attempts[0].body)]


def test_a_worker_killed_between_commit_and_delivery(hook_stack: Stack, client: OpenAI, endpoint: Receiver) -> None:
    # The only worker now delivers nothing for an hour: the turn commits, its delivery waits in the outbox.
    hook_stack.stop("worker-1", kill=True)
    hook_stack.spawn("worker-lazy", "worker", env={"TURNSTREAM_WEBHOOK_POLL_S": "3600"})
    response = client.responses.create(model="plain", input="hello")
    assert response.status == "completed"
    redis = hook_stack.redis.client()
    assert redis.llen(keys.webhook_outbox()) == 1
    time.sleep(0.3)
    assert endpoint.deliveries == []

    hook_stack.stop("worker-lazy", kill=True)
    hook_stack.spawn("worker-2", "worker")

    wait_until(lambda: endpoint.accepted(), 30, "the delivery by the next worker")
    time.sleep(0.3)
    [delivered] = endpoint.accepted()
    assert delivered["data"] == {"id": response.id} and delivered["type"] == "response.completed"
    assert redis.llen(keys.webhook_outbox()) == 0 and redis.zcard(keys.webhook_due()) == 0


def test_a_receiver_that_never_accepts_ends_in_the_dead_letter_list(
    hook_stack: Stack, client: OpenAI, receivers: ReceiverServer
) -> None:
    receiver = Receiver(failures=1000)
    endpoint_id, receiver.secret = add_endpoint(hook_stack, receivers.url("dead", receiver), "response.completed")
    try:
        response = client.responses.create(model="plain", input="hello")
        redis = hook_stack.redis.client()
        wait_until(lambda: redis.llen(keys.WEBHOOK_DEAD) == 1, 15, "the dead letter")
    finally:
        cli(hook_stack, "remove", endpoint_id)
    dead = json.loads(redis.lindex(keys.WEBHOOK_DEAD, 0))  # type: ignore[arg-type]
    assert json.loads(dead["body"])["data"] == {"id": response.id}
    assert dead["attempts"] == 4 and dead["last_error"] == "HTTP 500"
    assert len(receiver.deliveries) == 4


def test_the_readme_webhooks_block_runs_verbatim(hook_stack: Stack, tmp_path: Path) -> None:
    [block] = re.findall(r"<!-- shell: webhooks -->\n```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    # `turnstream` is this checkout's command; `we_...` stands for the id that `add` printed.
    command = tmp_path / "turnstream"
    command.write_text(f'#!/bin/sh\nexec {sys.executable} -c "from shared.cli import main; main()" "$@"\n')
    command.chmod(0o755)
    listed_id = '"$(turnstream webhooks list --project team-a | cut -d" " -f1)"'
    script = block.replace("team-a we_...", f"team-a {listed_id}")
    env = {**hook_stack.env, "PATH": f"{tmp_path}:{hook_stack.env.get('PATH', '')}"}
    done = subprocess.run(["bash", "-e", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    endpoint_id = done.stdout.split()[1]
    assert endpoint_id.startswith("we_") and "(project team-a)" in done.stdout  # where keyed clients' turns are
    assert f"{endpoint_id}  https://example.com/hooks/turnstream  response.completed response.failed" in done.stdout
    assert done.stdout.rstrip().endswith(f"removed {endpoint_id}")
