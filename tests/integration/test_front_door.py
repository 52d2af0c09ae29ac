"""The front door, tried as a newcomer would: every command started as its own process, as a console script
starts it (`python -P`: the working directory is not on sys.path), from a directory outside the repository."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from openai import OpenAI

from tests.conftest import ROOT, RedisServer, Stack, free_port, start_redis, wait_until
from tests.integration.keyed_stack import KeyedStack

README = (ROOT / "README.md").read_text()
CLI = [sys.executable, "-P", "-m", "shared.cli"]
TRACEBACK = "Traceback (most recent call last)"


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_"))}
    env.update({"PYTHONUNBUFFERED": "1", "TURNSTREAM_PORT": str(free_port()), "TURNSTREAM_MOCK_PORT": str(free_port())})
    env.update(settings)
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@dataclass
class Running:
    """A long-running command; its output goes to files so a full pipe can never stall it."""

    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    running: list[Running] = []

    def _start(*args: str, env: dict[str, str], cwd: Path | None = None, name: str = "cmd") -> Running:
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen([*CLI, *args], env=env, cwd=cwd or tmp_path, stdout=o, stderr=e)
        r = Running(proc, out, err)
        running.append(r)
        return r

    yield _start
    for r in running:
        r.stop()


def wait_ready(url: str, r: Running, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while r.proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {url}:\n{r.err}")
        time.sleep(0.05)
    raise AssertionError(f"exited {r.proc.returncode} before {url} answered:\n{r.out}\n{r.err}")


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert TRACEBACK not in result.stdout + result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


def closed_port() -> int:
    return free_port()  # bound and released at once: nothing listens there


# --- the README's agents file --------------------------------------------------------------------------


def readme_agents_file() -> str:
    match = re.search(r"```python\n(# myagents\.py.*?)```", README, re.S)
    assert match, "the README's agents example (# myagents.py ...) is missing"
    return match.group(1)


def test_readme_agents_file_loads_by_module_name_from_the_working_directory(tmp_path: Path, start: object) -> None:
    (tmp_path / "myagents.py").write_text(readme_agents_file())
    env = clean_env(TURNSTREAM_AGENTS="myagents")
    dev = start("dev", env=env, cwd=tmp_path)  # type: ignore[operator]
    base = f"http://127.0.0.1:{env['TURNSTREAM_PORT']}/v1"
    wait_ready(f"{base}/models", dev)
    wait_until(lambda: "support" in {m["id"] for m in httpx.get(f"{base}/models").json()["data"]}, 20, "agents")

    client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30)
    weather = client.responses.create(model="support", input="What is the weather in Paris?")
    assert weather.status == "completed", weather.error
    assert "Paris: 21°C, clear" in weather.output_text
    order = client.responses.create(model="support", input='call lookup_order({"order": {"id": "A-17"}})')
    assert order.status == "completed", order.error
    outputs = [item.output for item in order.output if item.type == "function_call_output"]
    assert [json.loads(output) for output in outputs] == [{"id": "A-17", "status": "shipped"}]


def test_dev_with_custom_agents_suggests_a_model_it_serves(tmp_path: Path, start: object) -> None:
    (tmp_path / "myagents.py").write_text(readme_agents_file())
    env = clean_env(TURNSTREAM_AGENTS="myagents")
    dev = start("dev", env=env, cwd=tmp_path)  # type: ignore[operator]
    base = f"http://127.0.0.1:{env['TURNSTREAM_PORT']}/v1"
    wait_ready(f"{base}/models", dev)
    assert "turnstream-mock" not in dev.out
    example = next(line for line in dev.out.splitlines() if "curl" in line)
    assert '"model": "support"' in example and "chat --url" in dev.out and "--model support" in dev.out
    body = example.split("-d '", 1)[1].rstrip("'")
    wait_until(lambda: "support" in {m["id"] for m in httpx.get(f"{base}/models").json()["data"]}, 20, "agents")
    answer = httpx.post(f"{base}/responses", json=json.loads(body), timeout=30)
    assert answer.status_code == 200, answer.text


def test_agents_module_that_is_nowhere_gets_one_line_naming_the_fix(tmp_path: Path) -> None:
    result = run_cli("worker", env=clean_env(TURNSTREAM_AGENTS="nosuchagents", TURNSTREAM_REDIS_URL="redis://x"),
                     cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result)
    assert "TURNSTREAM_AGENTS=nosuchagents" in line and "no module 'nosuchagents' in the working directory" in line
    assert "/path/to/nosuchagents.py" in line


# --- startup errors: one line, the fix, and nothing announced -------------------------------------------


def test_api_on_a_busy_port_says_so_in_one_line(tmp_path: Path, busy_port: int, redis_server: RedisServer) -> None:
    result = run_cli("api", "--port", str(busy_port), env=clean_env(TURNSTREAM_REDIS_URL=redis_server.url),
                     cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result)
    assert f"127.0.0.1:{busy_port}" in line and "in use" in line
    assert "TURNSTREAM_PORT" in line and "--port" in line


def test_dev_on_a_busy_port_announces_nothing(tmp_path: Path, busy_port: int) -> None:
    result = run_cli("dev", env=clean_env(TURNSTREAM_PORT=str(busy_port)), cwd=tmp_path)
    assert result.returncode == 1
    assert "TURNSTREAM_PORT" in one_line(result)  # and stdout, where the banner goes, stayed empty


def test_dev_on_a_busy_mock_port_names_its_setting(tmp_path: Path, busy_port: int) -> None:
    result = run_cli("dev", env=clean_env(TURNSTREAM_MOCK_PORT=str(busy_port)), cwd=tmp_path)
    assert result.returncode == 1
    assert "TURNSTREAM_MOCK_PORT" in one_line(result)


@pytest.mark.parametrize("command", ["api", "worker"])
def test_command_without_a_redis_url_says_what_to_set(tmp_path: Path, command: str) -> None:
    result = run_cli(command, env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result)
    assert "TURNSTREAM_REDIS_URL is not set" in line and "turnstream dev" in line


def test_invalid_setting_is_named_in_one_line(tmp_path: Path) -> None:
    result = run_cli("mock", env=clean_env(TURNSTREAM_MOCK_PORT="eighty"), cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result).startswith("turnstream mock: TURNSTREAM_MOCK_PORT: ")


def test_dev_with_unreachable_redis_says_so_without_the_password(tmp_path: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    result = run_cli("dev", env=clean_env(TURNSTREAM_REDIS_URL=url), cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result)
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in line and "TURNSTREAM_REDIS_URL" in line
    assert "hunter2" not in line


def test_worker_with_unreachable_redis_says_so_once_and_waits(tmp_path: Path, start: object) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    worker = start("worker", env=clean_env(TURNSTREAM_REDIS_URL=url, TURNSTREAM_REDIS_RETRY_MAX_S="0.2"))  # type: ignore[operator]
    wait_until(lambda: "cannot reach Redis" in worker.err, 30, "the worker's warning")
    time.sleep(2)  # dozens of retries meanwhile
    assert worker.proc.poll() is None  # it waits for Redis instead of exiting
    warnings = [line for line in worker.err.splitlines() if "cannot reach Redis" in line]
    assert len(warnings) == 1 and "TURNSTREAM_REDIS_URL" in warnings[0], worker.err
    assert TRACEBACK not in worker.err
    assert "retries remaining" not in worker.err  # arq's own connect countdown, which started over every time


def test_worker_says_once_when_redis_comes_back(tmp_path: Path, start: object) -> None:
    port = closed_port()
    env = clean_env(TURNSTREAM_REDIS_URL=f"redis://127.0.0.1:{port}/0", TURNSTREAM_REDIS_RETRY_MAX_S="0.2")
    worker = start("worker", env=env)  # type: ignore[operator]
    wait_until(lambda: "cannot reach Redis" in worker.err, 30, "the worker's warning")
    server = start_redis(tmp_path, port)
    try:
        wait_until(lambda: "worker ready" in worker.err, 30, "the worker, once Redis is up")
    finally:
        worker.stop()
        server.proc.terminate()
        server.proc.wait(timeout=10)
    lines = worker.err.splitlines()
    assert sum("cannot reach Redis" in line for line in lines) == 1, worker.err
    assert sum("reachable again" in line for line in lines) == 1, worker.err


@pytest.mark.parametrize(
    "command",
    [("keys", "list"), ("keys", "create", "--project", "p"), ("webhooks", "list", "--project", "p"),
     ("worker", "--check")],
    ids=["keys-list", "keys-create", "webhooks-list", "worker-check"],
)
def test_redis_commands_with_redis_away_say_so_in_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    result = run_cli(*command, env=clean_env(TURNSTREAM_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0"),
                     cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"turnstream {command[0]}: cannot reach Redis at redis://127.0.0.1:")
    assert "TURNSTREAM_REDIS_URL" in line


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--requirepass", "right"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: redis_lib.Redis(port=port, password="right").ping(), what="redis-server")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("command", [("keys", "list"), ("worker", "--check")], ids=["keys-list", "worker-check"])
@pytest.mark.parametrize("password", ["wrong", None], ids=["wrong-password", "no-password"])
def test_redis_commands_with_a_refused_password_name_the_setting(
    tmp_path: Path, redis_with_password: int, command: tuple[str, ...], password: str | None
) -> None:
    auth = f":{password}@" if password else ""
    env = clean_env(TURNSTREAM_REDIS_URL=f"redis://{auth}127.0.0.1:{redis_with_password}/0")
    result = run_cli(*command, env=env, cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result)
    assert "refused the credentials" in line and "password in TURNSTREAM_REDIS_URL" in line
    assert "wrong" not in line.split("(")[0]  # the URL is shown without its password


@pytest.mark.parametrize("command", ["api", "worker", "keys"])
def test_a_redis_url_without_a_scheme_is_named_with_the_fix(tmp_path: Path, command: str) -> None:
    result = run_cli(command, *(["list"] if command == "keys" else []),
                     env=clean_env(TURNSTREAM_REDIS_URL="localhost:6500"), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(f"turnstream {command}: TURNSTREAM_REDIS_URL: 'localhost:6500' has no scheme")
    assert "redis://localhost:6500/0" in line


def test_a_seed_key_with_a_short_secret_is_named_in_characters(tmp_path: Path) -> None:
    seeds = '[{"project": "a", "secret": "sk-ts-ok-' + "x" * 40 + '"}, {"project": "b", "secret": "short"}]'
    env = clean_env(TURNSTREAM_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0", TURNSTREAM_API_KEYS=seeds)
    result = run_cli("api", env=env, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result)  # nothing announced: stdout, where the banner goes, stayed empty
    assert line.startswith("turnstream api: TURNSTREAM_API_KEYS: entry 1 'secret': the secret has 5 characters")
    assert "at least 32" in line and "items" not in line and "token_urlsafe" in line


def test_api_logs_a_redis_outage_once_however_many_requests_it_refuses(tmp_path: Path, start: object) -> None:
    server = start_redis(tmp_path)
    env = clean_env(TURNSTREAM_REDIS_URL=server.url, TURNSTREAM_AUTH="off")
    api = start("api", env=env)  # type: ignore[operator]
    root = f"http://127.0.0.1:{env['TURNSTREAM_PORT']}"
    wait_ready(f"{root}/readyz?exclude=workers", api)
    server.proc.terminate()
    server.proc.wait(timeout=10)
    for _ in range(5):
        assert httpx.get(f"{root}/v1/models", timeout=10).status_code == 503
    time.sleep(2.5)  # the fan-out's reader retries every second meanwhile
    server = start_redis(tmp_path, server.port)
    try:
        wait_until(lambda: "Redis reachable again" in api.err, 30, "the recovery line")
        assert httpx.get(f"{root}/v1/models", timeout=10).status_code == 200
        lines = api.err.splitlines()
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)
    assert sum("cannot reach Redis" in line for line in lines) == 1, api.err
    assert sum("Redis reachable again" in line for line in lines) == 1, api.err


def test_api_banner_says_keys_are_required_and_how_to_make_one(tmp_path: Path, start: object,
                                                               redis_server: RedisServer) -> None:
    env = clean_env(TURNSTREAM_REDIS_URL=redis_server.url)
    api = start("api", env=env)  # type: ignore[operator]
    wait_ready(f"http://127.0.0.1:{env['TURNSTREAM_PORT']}/readyz?exclude=workers", api)
    banner = api.out
    assert "API keys required" in banner and "turnstream keys create --project NAME" in banner
    assert f"open http://127.0.0.1:{env['TURNSTREAM_PORT']}/ for the playground" in banner


def test_a_missing_or_wrong_key_is_told_where_keys_come_from(keyed: KeyedStack, tmp_path: Path) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-ts-wrong"}):
        answer = httpx.get(f"{keyed.base_url()}/models", headers=headers)
        assert answer.status_code == 401
        assert "turnstream keys create" in answer.json()["error"]["message"]
    env = clean_env()
    chat = subprocess.run([*CLI, "chat", "--url", keyed.base_url()], input="hi\n", env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert chat.returncode == 1 and "TURNSTREAM_API_KEY" in chat.stdout + chat.stderr
    tail = run_cli("tail", "resp_" + "0" * 48, "--url", keyed.base_url(), env=env, cwd=tmp_path)
    assert tail.returncode == 1 and "401" in tail.stderr and "TURNSTREAM_API_KEY" in tail.stderr


def test_api_starts_while_redis_is_away_and_says_so(tmp_path: Path, start: object) -> None:
    env = clean_env(TURNSTREAM_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    api = start("api", env=env)  # type: ignore[operator]
    root = f"http://127.0.0.1:{env['TURNSTREAM_PORT']}"
    wait_ready(f"{root}/healthz", api)
    assert httpx.get(f"{root}/readyz").status_code == 503
    warning = next(line for line in api.err.splitlines() if "cannot reach Redis" in line)
    assert "TURNSTREAM_REDIS_URL" in warning and "503" in warning
    assert TRACEBACK not in api.err


# --- what a running server shows ---------------------------------------------------------------------


def test_dev_shows_where_it_listens_and_logs_each_request(tmp_path: Path, start: object) -> None:
    env = clean_env()
    dev = start("dev", env=env)  # type: ignore[operator]
    port, mock_port = env["TURNSTREAM_PORT"], env["TURNSTREAM_MOCK_PORT"]
    wait_ready(f"http://127.0.0.1:{port}/readyz", dev)
    OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0).responses.create(
        model="turnstream-mock", input="hello"
    )
    wait_until(lambda: '"POST /v1/responses HTTP/1.1" 200' in dev.err, 10, "the access log line")
    assert f"Uvicorn running on http://127.0.0.1:{port}" in dev.err
    assert f"Uvicorn running on http://127.0.0.1:{mock_port}" in dev.err
    banner = dev.out
    assert f"API on http://127.0.0.1:{port}/v1" in banner
    assert f"open http://127.0.0.1:{port}/ for the playground" in banner
    # The banner's commands run as typed here: `python -m shared.cli`, not a `turnstream` that is not on PATH.
    assert "-m shared.cli chat --url" in banner


def test_dev_logs_a_turn_in_two_lines_and_starts_up_once(tmp_path: Path, start: object) -> None:
    env = clean_env()
    dev = start("dev", env=env)  # type: ignore[operator]
    port = env["TURNSTREAM_PORT"]
    wait_ready(f"http://127.0.0.1:{port}/readyz", dev)
    wait_until(lambda: "worker ready" in dev.err, 10, "the worker")
    before = len(dev.err.splitlines())
    # Two model calls (the tool call, then the answer) and a tool run.
    OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0).responses.create(
        model="turnstream-mock", input="What is the weather in Bengaluru?"
    )
    wait_until(lambda: '"POST /v1/responses HTTP/1.1" 200' in dev.err, 10, "the access log line")
    turn_lines = dev.err.splitlines()[before:]
    assert len(turn_lines) == 2, turn_lines  # the turn's end, and the request's access line
    assert "turn ended: completed" in turn_lines[0]
    assert "httpx" not in dev.err and "chat/completions" not in dev.err
    for line in ("Started server process", "Waiting for application startup", "Application startup complete"):
        assert dev.err.count(line) == 1, dev.err


def test_ctrl_c_stops_dev_with_a_plain_message(tmp_path: Path, start: object) -> None:
    env = clean_env()
    dev = start("dev", env=env)  # type: ignore[operator]
    wait_ready(f"http://127.0.0.1:{env['TURNSTREAM_PORT']}/readyz", dev)
    wait_until(lambda: "worker ready" in dev.err, 10, "the worker")

    dev.stop(signal.SIGINT)
    assert dev.err.strip().endswith("turnstream dev: stopped")
    assert "SIGUSR1" not in dev.err and TRACEBACK not in dev.err


def test_mock_says_where_it_listens(tmp_path: Path, start: object) -> None:
    port = free_port()
    mock = start("mock", "--port", str(port), env=clean_env())  # type: ignore[operator]
    wait_ready(f"http://127.0.0.1:{port}/v1/models", mock)
    assert f"http://127.0.0.1:{port}/v1" in mock.out


def test_api_flags_override_the_settings(tmp_path: Path, start: object, redis_server: RedisServer) -> None:
    port = free_port()
    env = clean_env(TURNSTREAM_REDIS_URL=redis_server.url, TURNSTREAM_HOST="192.0.2.1")
    api = start("api", "--host", "127.0.0.1", "--port", str(port), env=env)  # type: ignore[operator]
    wait_ready(f"http://127.0.0.1:{port}/readyz?exclude=workers", api)


def test_uvicorn_imports_the_api_app(tmp_path: Path, redis_server: RedisServer) -> None:
    port = free_port()
    env = clean_env(TURNSTREAM_REDIS_URL=redis_server.url, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = f"http://127.0.0.1:{port}/readyz?exclude=workers"  # no worker runs here
        wait_until(lambda: httpx.get(ready).status_code == 200, 30, "uvicorn api.app:app")
        # Built from the environment's settings: keys are required, as for `turnstream api`.
        unauthenticated = httpx.get(f"http://127.0.0.1:{port}/v1/models")
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["code"] == "invalid_api_key"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert TRACEBACK not in err


def test_chat_and_tail_print_no_http_client_logs_and_tail_finds_dev(tmp_path: Path, start: object) -> None:
    env = clean_env()
    dev = start("dev", env=env)  # type: ignore[operator]
    wait_ready(f"http://127.0.0.1:{env['TURNSTREAM_PORT']}/readyz", dev)

    chat = subprocess.run(
        [*CLI, "chat"], input="My name is Ravi.\n", env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert "bot> Nice to meet you, Ravi." in chat.stdout
    assert chat.stderr == ""

    response = OpenAI(base_url=f"http://127.0.0.1:{env['TURNSTREAM_PORT']}/v1", api_key="x").responses.create(
        model="turnstream-mock", input="count to 3"
    )
    # No --url and no TURNSTREAM_REDIS_URL: tail reads the dev server's API, as the README shows it.
    tail = run_cli("tail", response.id, env=env, cwd=tmp_path)
    assert tail.returncode == 0, tail.stderr
    assert tail.stderr == ""
    assert tail.stdout.splitlines()[-1].endswith("response.completed [attempt 1] completed")


def test_tail_with_nothing_to_reach_names_both_ways(tmp_path: Path) -> None:
    result = run_cli("tail", "resp_x", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    line = result.stderr.strip().splitlines()[-1]
    assert "cannot reach the API at http://127.0.0.1:" in line and "--url" in line and "TURNSTREAM_REDIS_URL" in line


def test_tail_with_unreachable_redis_names_both_ways(tmp_path: Path) -> None:
    env = clean_env(TURNSTREAM_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    result = run_cli("tail", "resp_x", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "TURNSTREAM_REDIS_URL" in one_line(result) and "--url" in result.stderr


# --- a real upstream -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "hint"),
    [
        ("POST", "/v1/chat/completions", "POST /v1/responses"),
        ("POST", "/chat/completions", "POST /v1/responses"),
        ("POST", "/responses", "did you mean /v1/responses?"),
        ("GET", "/models", "did you mean /v1/models?"),
        ("GET", "/v1/nothing-here", "/v1/responses, /v1/conversations, /v1/models"),
        ("GET", "/v2/responses", "under the base URL http://HOST:PORT/v1"),
    ],
    ids=["chat-completions", "chat-completions-without-v1", "responses-without-v1", "models-without-v1",
         "unknown-v1-path", "unknown-version"],
)
def test_unserved_paths_get_an_openai_shaped_404_with_a_hint(stack: Stack, method: str, path: str, hint: str) -> None:
    answer = httpx.request(method, stack.api_url + path, json={"model": "turnstream-mock", "input": "hi"})
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "not_found"
    assert hint in error["message"]


def test_input_of_the_wrong_type_says_a_string_or_a_list(stack: Stack) -> None:
    answer = httpx.post(f"{stack.base_url}/responses", json={"model": "turnstream-mock", "input": 5})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "input"
    assert error["message"] == "Invalid value for 'input': expected a string or a list of input items."


def test_version_works_as_a_command(tmp_path: Path) -> None:
    result = run_cli("--version", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0 and re.fullmatch(r"turnstream \d+\.\d+\.\d+\n", result.stdout), result


def test_unknown_model_error_names_the_settings_that_serve_it(stack: Stack) -> None:
    r = httpx.post(f"{stack.base_url}/responses", json={"model": "gpt-4.1-mini", "input": "hi"})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "TURNSTREAM_ALLOW_MODEL_PASSTHROUGH" in message and "TURNSTREAM_AGENTS" in message


def test_default_agents_run_on_the_upstream_model_setting(tmp_path: Path) -> None:
    code = "from worker.default_agents import AGENTS; print(sorted({a.model for a in AGENTS}))"
    for setting, expected in ((None, "['turnstream-mock']"), ("gpt-4.1-mini", "['gpt-4.1-mini']")):
        env = clean_env(PYTHONPATH=str(ROOT), **({"TURNSTREAM_UPSTREAM_MODEL": setting} if setting else {}))
        result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert result.stdout.strip() == expected, result.stderr


def test_worker_warns_when_the_upstream_lacks_the_agents_model(tmp_path: Path, start: object, stack: Stack) -> None:
    # The mock lists only turnstream-mock, as a real provider lists only its own models.
    env = clean_env(OPENAI_BASE_URL=stack.mock_url, TURNSTREAM_UPSTREAM_MODEL="gpt-4.1-mini")
    dev = start("dev", env=env)  # type: ignore[operator]
    wait_until(lambda: "does not list every model" in dev.err, 20, "the upstream warning")
    warning = next(line for line in dev.err.splitlines() if "does not list every model" in line)
    assert "'gpt-4.1-mini'" in warning and "TURNSTREAM_UPSTREAM_MODEL" in warning and "TURNSTREAM_AGENTS" in warning


def test_upstream_error_names_the_url_and_the_missing_v1(tmp_path: Path, start: object, stack: Stack) -> None:
    without_v1 = stack.mock_url.removesuffix("/v1")
    env = clean_env(OPENAI_BASE_URL=without_v1)
    dev = start("dev", env=env)  # type: ignore[operator]
    base = f"http://127.0.0.1:{env['TURNSTREAM_PORT']}/v1"
    wait_ready(f"{base}/models", dev)
    wait_until(lambda: "worker ready" in dev.err, 10, "the worker")

    response = OpenAI(base_url=base, api_key="unused", max_retries=0).responses.create(
        model="turnstream-mock", input="hello"
    )
    assert response.status == "failed" and response.error is not None
    assert f"404 from {without_v1}/chat/completions" in response.error.message
    assert "/v1" in response.error.message.split("chat/completions", 1)[1]
    wait_until(lambda: "listing its models answered 404" in dev.err, 10, "the start-up warning")


def test_with_conversation_feeds_off_the_feed_route_says_so(tmp_path: Path, start: object,
                                                             redis_server: RedisServer) -> None:
    env = clean_env(TURNSTREAM_REDIS_URL=redis_server.url, TURNSTREAM_AUTH="off",
                    TURNSTREAM_CONVERSATION_FEED_TTL_S="0")
    api = start("api", env=env)  # type: ignore[operator]
    root = f"http://127.0.0.1:{env['TURNSTREAM_PORT']}"
    wait_ready(f"{root}/readyz?exclude=workers", api)
    conversation = httpx.post(f"{root}/v1/conversations", json={}).json()
    answer = httpx.get(f"{root}/v1/conversations/{conversation['id']}/events")
    assert answer.status_code == 501
    assert answer.json()["error"]["code"] == "conversation_feed_off"
    assert "TURNSTREAM_CONVERSATION_FEED_TTL_S" in answer.json()["error"]["message"]
