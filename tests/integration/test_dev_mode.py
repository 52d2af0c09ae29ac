"""The README's run command: `turnstream dev` serves everything on the embedded Redis, no key, no server."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
from openai import OpenAI

from tests.conftest import ROOT, free_port, wait_until


def test_dev_mode_runs_on_the_embedded_redis_with_no_key(tmp_path: object) -> None:
    port, mock_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_"))}
    env.update({"TURNSTREAM_PORT": str(port), "TURNSTREAM_MOCK_PORT": str(mock_port), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-c", "from shared.cli import main; main()", "dev"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "turnstream dev")
        client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        conv = client.conversations.create()
        client.responses.create(model="turnstream-mock", input="My name is Ravi.", conversation=conv.id)
        answer = client.responses.create(model="turnstream-mock", input="What is my name?", conversation=conv.id)
        assert answer.output_text == "Your name is Ravi."
        # The embedded worker heartbeats like any other, so /readyz counts it.
        assert httpx.get(f"{base}/readyz").json()["workers"]["live"] == 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"API on {base}/v1" in out
    assert "embedded in-process Redis" in out
    assert "access: open: no API key checked" in out
