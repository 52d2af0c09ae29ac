"""Structured logs: one JSON object per line carrying the turn's ids, and never a secret or a prompt."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext

from shared.logs import LogFormat, add_log_context, configure_logging, current_context, log_context
from tests.conftest import free_port, wait_until


@pytest.fixture
def configure() -> Iterator[Callable[[LogFormat], io.StringIO]]:
    """configure_logging into a buffer; the root logger's handlers (pytest's among them) come back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def _configure(fmt: LogFormat) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(fmt, stream=stream)
        return stream

    yield _configure
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def captured(configure: Callable[[LogFormat], io.StringIO]) -> io.StringIO:
    return configure("json")


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_the_standard_fields_and_the_bound_context(captured: io.StringIO) -> None:
    log = logging.getLogger("turnstream.test")
    with log_context(response_id="resp_1"):
        add_log_context(attempt=2, conversation_id="conv_1")
        log.info("turn %s", "ended")
    log.warning("outside")

    inside, outside = records(captured)
    assert inside["message"] == "turn ended" and inside["level"] == "INFO" and inside["logger"] == "turnstream.test"
    assert inside["timestamp"].endswith("+00:00")
    assert (inside["response_id"], inside["conversation_id"], inside["attempt"]) == ("resp_1", "conv_1", 2)
    assert set(outside) == {"timestamp", "level", "logger", "message"}


def test_extra_attributes_never_reach_the_line(captured: io.StringIO) -> None:
    logging.getLogger("t").info("call", extra={"api_key": "sk-secret", "prompt": "my diary"})
    line = captured.getvalue()
    assert "sk-secret" not in line and "my diary" not in line


def test_exception_is_one_field_of_the_same_line(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("t").exception("failed")
    (entry,) = records(captured)
    assert entry["message"] == "failed" and "RuntimeError: boom" in entry["exception"]


async def test_concurrent_turns_keep_their_own_context(captured: io.StringIO) -> None:
    async def turn(response_id: str) -> None:
        with log_context(response_id=response_id):
            await asyncio.sleep(0)
            add_log_context(attempt=int(response_id[-1]))
            await asyncio.sleep(0)
            logging.getLogger("t").info("done")

    await asyncio.gather(turn("resp_1"), turn("resp_2"))
    assert sorted((e["response_id"], e["attempt"]) for e in records(captured)) == [("resp_1", 1), ("resp_2", 2)]


def test_trace_id_comes_from_the_current_span() -> None:
    context = SpanContext(trace_id=0xABC, span_id=0x1, is_remote=False)
    with trace.use_span(NonRecordingSpan(context)):
        assert current_context()["trace_id"] == f"{0xABC:032x}"
    assert "trace_id" not in current_context()


def test_unknown_context_field_is_refused() -> None:
    with pytest.raises(ValueError, match="prompt"), log_context(prompt="hello"):
        pass


def test_human_format_appends_the_turn_ids(configure: Callable[[LogFormat], io.StringIO]) -> None:
    stream = configure("human")
    with log_context(response_id="resp_9", attempt=1):
        logging.getLogger("t").info("turn ended")
    assert stream.getvalue().rstrip().endswith("t: turn ended [response_id=resp_9 attempt=1]")


def test_dev_with_json_logs_writes_only_json_with_the_turn_ids_and_no_text(tmp_path: Path) -> None:
    port, mock_port = free_port(), free_port()
    secret = "sk-test-do-not-log-4242"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_"))}
    env.update(
        TURNSTREAM_PORT=str(port),
        TURNSTREAM_MOCK_PORT=str(mock_port),
        TURNSTREAM_LOG_FORMAT="json",
        OPENAI_API_KEY=secret,
        PYTHONUNBUFFERED="1",
    )
    err_path = tmp_path / "dev.log"
    with err_path.open("wb") as log:
        # stdout too: the banner is a log record in JSON mode, so a shipper reading both streams gets only JSON.
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "shared.cli", "dev"], env=env, cwd=tmp_path, stdout=log, stderr=log
        )
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30)
        wait_until(lambda: client.models.list() is not None, 30, "turnstream dev")
        conversation = client.conversations.create()
        response = client.responses.create(
            model="turnstream-mock", input="My name is Zanzibar Quokka.", conversation=conversation.id
        )
        assert "Zanzibar" in response.output_text
        wait_until(lambda: "turn ended" in err_path.read_text(), 10, "the worker's line")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

    text = err_path.read_text()
    entries = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"timestamp", "level", "logger", "message"} <= set(e) for e in entries)
    mine = [e for e in entries if e.get("response_id") == response.id]
    ended = [e for e in mine if e["message"] == "turn ended: completed"]
    assert len(ended) == 1 and ended[0]["conversation_id"] == conversation.id and ended[0]["attempt"] == 1
    assert any(e["logger"] == "uvicorn.access" and "POST /v1/responses" in e["message"] for e in mine)
    assert any(e["message"].startswith(f"turnstream dev: API on http://127.0.0.1:{port}/v1") for e in entries)
    assert entries[-1]["message"] == "turnstream dev: stopped"
    assert "Zanzibar" not in text and secret not in text
