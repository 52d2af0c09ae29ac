"""Startup objects kept out of the garbage collector's way in a long-running service process.

A full (generation 2) collection walks every object the process tracks, and most of those were made at
startup (modules, pydantic models, the app and its routes) and live as long as the process. Measured in the
bench's 50-turn bursts, the API held ~100,000 of them and each full collection took 70-80 ms of CPU, during
which its event loop, and so every stream it serves, stood still; the workers' took ~75 ms. Frozen once
the code is loaded and the app built (`gc.freeze`), they are left out of every later collection, which then
walks only what the process made since.

It is the process's entry point that freezes (shared/cli/main.py: `api`, `worker`, `dev`), not the app or the
worker they build: a process that embeds those (the test suite runs them in its own process) keeps its own
collector as it is.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Called once the process has started: what is garbage now is collected, what lives is frozen."""
    gc.collect()
    gc.freeze()
