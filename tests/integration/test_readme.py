"""The README stays true: its SDK examples run, and its settings table names every setting."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path

import pytest
from openai import OpenAI

from shared.settings import Settings
from tests.conftest import ROOT, Stack

README = (ROOT / "README.md").read_text()
EXAMPLES = dict(re.findall(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", README, re.S))
EXPECTED_OUTPUT = {
    "multi-turn": "Your name is Ravi.",
    "background": "completed 1 2 3 4 5 6 7 8 9",
    "tools": "[calling get_weather({\"city\": \"Bengaluru\"})]",
    "websocket": "Your name is Ravi.",
}
USE_IT = re.search(r"<!-- shell: use-it -->\n```sh\n(.*?)```", README, re.S)


def test_readme_has_the_examples() -> None:
    assert set(EXAMPLES) == set(EXPECTED_OUTPUT)


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_readme_example_runs(name: str, stack: Stack) -> None:
    code = EXAMPLES[name].replace("http://127.0.0.1:8000/v1", stack.base_url)
    code = code.replace("ws://127.0.0.1:8000/v1", stack.base_url.replace("http://", "ws://"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README example {name}", "exec"), {"__name__": "__readme__"})
    assert EXPECTED_OUTPUT[name] in out.getvalue()
    if name == "tools":
        assert "Tool lookup_order returned: shipped." in out.getvalue()


def test_readme_settings_table_names_every_setting() -> None:
    for name in Settings.model_fields:
        assert f"TURNSTREAM_{name.upper()}" in README, name


def test_readme_commands_exist() -> None:
    makefile = (Path(ROOT) / "Makefile").read_text()
    assert "make dev" in README and "\ndev:" in makefile
    assert "make test" in README and "\ntest:" in makefile
    assert "make test" in (Path(ROOT) / ".ci" / "run").read_text()


def test_readme_curl_block_runs_verbatim(stack: Stack) -> None:
    assert USE_IT is not None
    done = OpenAI(base_url=stack.base_url, api_key="unused").responses.create(model="turnstream-mock", input="hi")
    script = USE_IT.group(1).replace("http://127.0.0.1:8000", stack.api_url).replace("RESPONSE_ID", done.id)
    result = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"status":"completed"' in result.stdout.replace(" ", "")  # the plain create
    assert "event: response.function_call_arguments.done" in result.stdout  # the streamed weather turn
    assert result.stdout.rstrip().endswith("data: [DONE]")  # the resumed stream ends as the spec says
