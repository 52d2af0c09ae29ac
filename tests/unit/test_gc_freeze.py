"""`turnstream api` keeps its startup objects out of the garbage collector's full collections."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import free_port

# Run in a process of its own: freezing the test runner's objects is what the entry point must not do to a
# process that embeds the app (shared/gc_freeze.py).
_PROBE = """
import gc
import importlib
cli = importlib.import_module("shared.cli.main")

async def serve(app, sock):
    print("frozen", gc.get_freeze_count())

cli._serve = serve
cli.main(["api"])
"""


def test_the_api_process_freezes_its_startup_objects_before_it_serves() -> None:
    env = {
        **os.environ,
        "TURNSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}",  # nothing there: the API starts anyway
        "TURNSTREAM_PORT": str(free_port()),
    }
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("frozen ")]
    assert int(line.split()[1]) > 10_000  # its modules, models and routes, not a handful of objects
