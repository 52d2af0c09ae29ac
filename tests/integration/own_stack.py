"""A stack of its own (redis-server, mock, API, workers as processes) for tests that set worker settings
or kill processes, so they disturb neither the session's shared stack nor each other."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import Stack, running_stack, start_redis


@contextlib.contextmanager
def own_stack(root: Path, env: dict[str, str], workers: int = 1, *, aof: bool = False) -> Iterator[Stack]:
    server = start_redis(root, aof=aof)
    stack: Stack | None = None
    try:
        with running_stack(server, root, env, workers, kill_at_end=True) as stack:
            yield stack
    finally:
        # The stack's current server: a test may have restarted it.
        current = stack.redis if stack is not None else server
        current.proc.terminate()
        current.proc.wait(timeout=10)
