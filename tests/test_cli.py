"""`turnstream chat` and `turnstream tail` against a real in-process stack.

The stack (embedded fakeredis, mock model, API, worker) runs on its own event loop in a background
thread, as `turnstream dev` would: `run_chat` uses the blocking SDK, so it must not share a loop with
the servers it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from api.app import create_app
from shared import events, keys, response_record
from shared.cli.chat import run_chat
from shared.cli.main import _self_command, main
from shared.cli.tail import run_tail
from shared.mock.server import MODEL_ID
from shared.mock.server import create_app as create_mock_app
from shared.models import Status, TurnOutcome
from shared.redis_conn import EmbeddedRedis, connect
from shared.response_object import build_response
from shared.settings import Settings
from shared.stream_tail import read_after
from shared.turn_state import Retention, TurnState
from worker.service import build_worker

T = TypeVar("T")

STARTUP_TIMEOUT_S = 20.0
TURN_TIMEOUT_S = 30.0


@dataclass
class Stack:
    settings: Settings
    embedded: EmbeddedRedis
    loop: asyncio.AbstractEventLoop

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def v1(self) -> str:
        return self.root + "/v1"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = TURN_TIMEOUT_S) -> T:
        """Runs a coroutine on the stack's loop (fakeredis clients belong to that loop) and waits for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def on_stack(self, coro: Coroutine[Any, Any, T]) -> T:
        """The same, awaited from the test's own loop so other work can run meanwhile."""
        return await asyncio.wait_for(
            asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop)), TURN_TIMEOUT_S
        )


def _listening_socket() -> socket.socket:
    # Bound here and handed to uvicorn, so no other process can take the port in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class _StackThread(threading.Thread):
    def __init__(self, settings: Settings, api_sock: socket.socket, mock_sock: socket.socket) -> None:
        super().__init__(name="turnstream-stack", daemon=True)
        self.settings = settings
        self.api_sock = api_sock
        self.mock_sock = mock_sock
        self.started_up = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.embedded: EmbeddedRedis | None = None
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.started_up.set()

    async def _main(self) -> None:
        settings = self.settings
        embedded = EmbeddedRedis()
        worker = build_worker(settings, await connect(settings, embedded), handle_signals=False)
        api = uvicorn.Server(
            uvicorn.Config(create_app(settings, embedded), log_level="warning", timeout_graceful_shutdown=2)
        )
        mock = uvicorn.Server(
            uvicorn.Config(create_mock_app(token_delay_ms=0), log_level="warning", timeout_graceful_shutdown=2)
        )
        tasks = [
            asyncio.create_task(api.serve(sockets=[self.api_sock])),
            asyncio.create_task(mock.serve(sockets=[self.mock_sock])),
            asyncio.create_task(worker.async_run()),
        ]
        self.loop = asyncio.get_running_loop()
        self.embedded = embedded
        self.stop_event = asyncio.Event()
        self.started_up.set()
        stopping = asyncio.create_task(self.stop_event.wait())
        try:
            done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping and task.exception() is not None:
                    raise RuntimeError("a stack component died") from task.exception()
        finally:
            stopping.cancel()
            api.should_exit = mock.should_exit = True
            await worker.close()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self.loop is not None and self.stop_event is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self.loop.call_soon_threadsafe(self.stop_event.set)
        self.join(timeout=15)


def _wait_until_ready(stack: Stack, thread: _StackThread) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last: object = None
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            if thread.error is not None:
                raise RuntimeError("the stack failed to start") from thread.error
            try:
                ready = http.get(stack.root + "/readyz").status_code == 200
                models = [m["id"] for m in http.get(stack.v1 + "/models").json()["data"]]
                upstream = http.get(stack.settings.upstream_base_url + "/models").status_code == 200
                # The API lists the default model even before any worker runs; the agents hash is
                # written by the worker's startup, so it proves a worker is taking jobs.
                published = stack.call(_published_agents(stack), timeout=5)
                last = (ready, models, upstream, published)
                if ready and MODEL_ID in models and upstream and MODEL_ID in published:
                    return
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                last = exc
            time.sleep(0.05)
    raise RuntimeError(f"the stack was not ready within {STARTUP_TIMEOUT_S}s; last check: {last!r}")


async def _published_agents(stack: Stack) -> list[str]:
    redis = stack.embedded.client(stack.settings)
    try:
        return [name.decode() for name in await redis.hkeys(keys.AGENTS)]
    finally:
        await redis.aclose()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    api_sock, mock_sock = _listening_socket(), _listening_socket()
    api_port, mock_port = api_sock.getsockname()[1], mock_sock.getsockname()[1]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=None,
        agents="worker.default_agents",
        host="127.0.0.1",
        port=api_port,
        mock_port=mock_port,
        openai_base_url=f"http://127.0.0.1:{mock_port}/v1",
    )
    thread = _StackThread(settings, api_sock, mock_sock)
    thread.start()
    try:
        if not thread.started_up.wait(STARTUP_TIMEOUT_S):
            raise RuntimeError("the stack thread did not start")
        if thread.error is not None:
            raise RuntimeError("the stack failed to start") from thread.error
        assert thread.loop is not None and thread.embedded is not None
        running = Stack(settings, thread.embedded, thread.loop)
        _wait_until_ready(running, thread)
        yield running
    finally:
        thread.stop()
        api_sock.close()
        mock_sock.close()
    assert not thread.is_alive(), "the stack did not shut down"


# --- chat ---------------------------------------------------------------------------------------


def _chat(stack: Stack, lines: str, model: str = MODEL_ID, out: io.StringIO | None = None) -> str:
    out = io.StringIO() if out is None else out
    run_chat(stack.v1, model, input_stream=io.StringIO(lines), out=out)
    return out.getvalue()


def test_chat_streams_answers_keeps_the_conversation_and_shows_tool_calls(stack: Stack) -> None:
    text = _chat(stack, "My name is Ravi.\nWhat is my name?\nWhat is the weather in Bengaluru?\n")

    banner = text.splitlines()[0]
    assert MODEL_ID in banner and "conversation conv_" in banner and "Ctrl-D to quit" in banner
    assert "bot> Nice to meet you, Ravi.\n" in text
    assert "bot> Your name is Ravi.\n" in text
    call = text.index('[calling get_weather({"city": "Bengaluru"})]\n')
    done = text.index("[get_weather done]\n")
    answer = text.index("bot> The weather in Bengaluru is Bengaluru: 24°C")
    assert call < done < answer
    # The call line stands alone: no empty `bot> ` before it, nothing glued after it.
    assert "bot> [calling" not in text and "bot> \n" not in text
    assert text.endswith("you> \n")  # the prompt that met end of input


def test_chat_skips_empty_lines_and_stops_at_quit(stack: Stack) -> None:
    text = _chat(stack, "\n   \nMy name is Ravi.\n/quit\nWhat is my name?\n")

    assert text.count("bot> ") == 1
    assert "Nice to meet you, Ravi." in text
    assert "Your name is Ravi." not in text


def test_chat_reports_api_errors_and_continues(stack: Stack) -> None:
    text = _chat(stack, "hello\nhello again\n", model="no-such-model")

    errors = [line for line in text.splitlines() if line.startswith("[error: 400 ")]
    assert len(errors) == 2, text
    assert "no-such-model" in errors[0]


def test_chat_reports_a_failed_turn(stack: Stack) -> None:
    text = _chat(stack, "[fail] hello\nMy name is Ravi.\n")

    assert "[failed: upstream model error" in text
    assert "Nice to meet you, Ravi." in text


class _CtrlCOnFirstAnswer(io.StringIO):
    """Raises KeyboardInterrupt where the first answer starts, as a Ctrl-C mid-stream would."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def write(self, s: str) -> int:
        if s == "bot> " and not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return super().write(s)


def test_chat_ctrl_c_cancels_the_response_and_the_chat_goes_on(stack: Stack) -> None:
    out = _CtrlCOnFirstAnswer()
    started = time.monotonic()
    text = _chat(stack, "count to 500 [delay=20ms]\nMy name is Ravi.\n", out=out)

    assert out.interrupted
    assert "[cancelled]\n" in text
    # The cancelled turn released the conversation: the next turn ran at once, not after 10 s of counting.
    assert text.index("[cancelled]") < text.index("bot> Nice to meet you, Ravi.")
    assert time.monotonic() - started < 8


# --- tail ---------------------------------------------------------------------------------------


async def _create(stack: Stack, text: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.post(stack.v1 + "/responses", json={"model": MODEL_ID, "input": text, "background": True})
        reply.raise_for_status()
        response_id: str = reply.json()["id"]
        return response_id


async def _wait_finished(stack: Stack, response_id: str) -> str:
    deadline = time.monotonic() + TURN_TIMEOUT_S
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() < deadline:
            status: str = (await http.get(f"{stack.v1}/responses/{response_id}")).json()["status"]
            if status not in ("queued", "in_progress"):
                return status
            await asyncio.sleep(0.05)
    raise AssertionError(f"{response_id} did not finish")


async def _tail_api(stack: Stack, response_id: str, after: int, url: str | None = None) -> list[str]:
    out = io.StringIO()
    # asyncio.timeout, not wait_for: a SystemExit raised in a separate task would stop the whole loop.
    async with asyncio.timeout(TURN_TIMEOUT_S):
        await run_tail(stack.settings, response_id, after, url or stack.v1, out=out)
    return out.getvalue().splitlines()


async def _tail_redis(stack: Stack, response_id: str, after: int) -> list[str]:
    async def on_stack_loop() -> str:
        out = io.StringIO()
        redis = stack.embedded.client(stack.settings)
        try:
            await run_tail(stack.settings, response_id, after, None, out=out, redis=redis)
        finally:
            await redis.aclose()
        return out.getvalue()

    return (await stack.on_stack(on_stack_loop())).splitlines()


def _events(lines: list[str]) -> list[tuple[int, str]]:
    parsed = []
    for line in lines:
        assert not line.startswith("---"), f"unexpected re-run marker: {line}"
        seq, event_type = line.split(" ", 2)[:2]
        parsed.append((int(seq), event_type))
    return parsed


def _assert_consecutive(lines: list[str], first: int) -> None:
    events = _events(lines)
    seqs = [seq for seq, _ in events]
    assert seqs == list(range(first, first + len(seqs))), seqs
    assert events[-1][1] == "response.completed"
    assert sum(1 for _, t in events if t in ("response.completed", "response.failed", "response.incomplete")) == 1


async def test_tail_through_the_api_replays_from_the_start_and_from_the_middle(stack: Stack) -> None:
    response_id = await _create(stack, "What is the weather in Bengaluru?")
    assert await _wait_finished(stack, response_id) == "completed"

    full = await _tail_api(stack, response_id, -1)
    _assert_consecutive(full, 0)
    assert full[0].startswith("0 response.created [attempt 0] queued")
    assert full[1].startswith("1 response.queued [attempt 0] queued")  # a background turn
    assert full[2].startswith("2 response.in_progress [attempt 1] in_progress")
    assert not any("re-run" in line for line in full)
    assert any("function_call get_weather" in line for line in full)
    assert any("function_call_output get_weather completed \"Bengaluru: 24°C" in line for line in full)
    assert full[-1].endswith("response.completed [attempt 1] completed")

    middle = await _tail_api(stack, response_id, 3)
    _assert_consecutive(middle, 4)
    # Started mid-stream, SSE cannot tell the attempt; everything else is the same as the full replay.
    assert middle == [line.replace(" [attempt 1]", "") for line in full[4:]]

    # A URL without the /v1 suffix works too.
    assert await _tail_api(stack, response_id, -1, url=stack.root) == full


async def test_tail_from_redis_matches_the_api_and_follows_a_live_response(stack: Stack) -> None:
    response_id = await _create(stack, "count to 60 [delay=10ms]")
    # Both start while the turn is running, so both must follow it live until the terminal event.
    from_redis, from_api = await asyncio.gather(_tail_redis(stack, response_id, -1), _tail_api(stack, response_id, -1))

    _assert_consecutive(from_redis, 0)
    assert from_redis == from_api
    deltas = "".join(
        json.loads(line.split(" ", 4)[4]) for line in from_redis if " response.output_text.delta " in line
    )
    assert deltas == " ".join(str(i) for i in range(1, 61))

    middle = await _tail_redis(stack, response_id, 3)
    _assert_consecutive(middle, 4)
    assert middle == from_redis[4:]  # Redis knows every event's attempt, wherever the replay starts


async def _take_over_after_first_delta(stack: Stack, response_id: str) -> None:
    """Does what a second worker does once the first one's lease lapsed: re-runs the turn as attempt 2."""
    redis = stack.embedded.client(stack.settings)
    try:
        deadline = time.monotonic() + TURN_TIMEOUT_S
        while not any(e.type == "response.output_text.delta" for e in await read_after(redis, response_id, -1)):
            assert time.monotonic() < deadline, "attempt 1 never streamed"
            await asyncio.sleep(0.01)
        state = TurnState(redis, Retention.from_settings(stack.settings))
        started = await state.start(response_id, None)  # from here on attempt 1's writes are refused
        assert started.attempt == 2
        record = await response_record.load(redis, response_id)
        assert record is not None
        req = record.request
        item = events.message_item("msg_rerun", "", "in_progress")
        await state.append(
            response_id,
            2,
            [
                events.lifecycle(events.IN_PROGRESS, build_response(req, Status.IN_PROGRESS)),
                events.output_item_added(0, item),
                events.text_delta("msg_rerun", 0, "Re-run answer."),
            ],
        )
        assert await state.finish(
            response_id,
            expect=Status.IN_PROGRESS,
            attempt=2,
            final=Status.COMPLETED,
            response=build_response(req, Status.COMPLETED, TurnOutcome(status=Status.COMPLETED)),
            conversation_id=req.conversation_id,
            items=[],
        )
    finally:
        await redis.aclose()


async def test_tail_marks_a_re_run_on_both_paths(stack: Stack) -> None:
    response_id = await _create(stack, "count to 500 [delay=20ms]")
    await stack.on_stack(_take_over_after_first_delta(stack, response_id))

    rerun = "--- re-run: attempt 2 (discard the output above) ---"
    from_redis = await _tail_redis(stack, response_id, -1)
    assert from_redis.count(rerun) == 1
    marker = from_redis.index(rerun)
    assert " response.output_text.delta [attempt 1] " in from_redis[marker - 1]
    assert " response.in_progress [attempt 2] " in from_redis[marker + 1]
    assert from_redis[-1].endswith(" response.completed [attempt 2] completed")
    without_marker = [line for line in from_redis if line != rerun]
    seqs = [int(line.split(" ", 1)[0]) for line in without_marker]
    assert seqs == list(range(len(seqs)))
    # SSE carries no attempt field; replayed from the start, the API path counts attempts just the same.
    assert await _tail_api(stack, response_id, -1) == from_redis

    first_delta = int(from_redis[marker - 1].split(" ", 1)[0])
    middle = await _tail_api(stack, response_id, first_delta - 1)
    assert "--- re-run: new attempt (discard the output above) ---" in middle
    assert "[attempt" not in "\n".join(middle)


async def test_tail_without_a_redis_url_reads_this_machines_api(stack: Stack) -> None:
    response_id = await _create(stack, "count to 5")
    assert await _wait_finished(stack, response_id) == "completed"
    assert stack.settings.redis_url is None

    out = io.StringIO()
    async with asyncio.timeout(TURN_TIMEOUT_S):
        await run_tail(stack.settings, response_id, -1, None, out=out)
    assert out.getvalue().splitlines() == await _tail_api(stack, response_id, -1)


async def test_tail_of_an_unknown_response_exits_1(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        await _tail_api(stack, "resp_doesnotexist", -1)
    assert exited.value.code == 1
    assert "404" in capsys.readouterr().err

    async def direct() -> int | str | None:
        redis = stack.embedded.client(stack.settings)
        try:
            await run_tail(stack.settings, "resp_doesnotexist", -1, None, out=io.StringIO(), redis=redis)
        except SystemExit as exc:
            return exc.code
        finally:
            await redis.aclose()
        return None

    assert await stack.on_stack(direct()) == 1
    assert "no response resp_doesnotexist" in capsys.readouterr().err


# --- the command itself -------------------------------------------------------------------------


def test_help_lists_the_main_settings(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["api", "--help"], ["dev", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        text = capsys.readouterr().out
        for variable in ("TURNSTREAM_REDIS_URL", "OPENAI_BASE_URL", "TURNSTREAM_AGENTS", "TURNSTREAM_LOG_FORMAT"):
            assert variable in text, (argv, variable)
    main_help = _help(capsys, ["api", "--help"])
    assert "--host" in main_help and "--port" in main_help
    assert "--port" in _help(capsys, ["mock", "--help"])


def _help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().out


def test_banner_names_the_script_by_path_when_it_is_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "turnstream"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "dev"])

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert _self_command() == ".venv/bin/turnstream"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert _self_command() == "turnstream"


def test_env_file_is_ignored_by_git() -> None:
    root = Path(__file__).resolve().parent.parent
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=root, check=False)
    assert ignored.returncode == 0, ".env (documented for secrets) must be in .gitignore"
