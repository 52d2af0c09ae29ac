"""`turnstream status`: the live workers (from their heartbeats) and the queue, read from Redis.

An operator's tool, like `keys` and `webhooks`: it reads Redis directly (TURNSTREAM_REDIS_URL). Exits 0 when
at least one worker of the queue is alive, 1 when none is (or Redis cannot be read), so scripts can wait on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, TextIO

from shared import fleet
from shared.cli.startup import redis_problem
from shared.metrics import QueueStats
from shared.settings import Settings


def register(sub: Any) -> None:
    """Adds the `status` command to the CLI's subcommands."""
    parser = sub.add_parser(
        "status",
        help="live workers (id, host, running turns, last heartbeat), queue depth and oldest wait",
        description="Live workers and the queue, read from the Redis in TURNSTREAM_REDIS_URL. "
        "Exit status 1 when no worker of the queue is alive.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    parser.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if not settings.redis_url:
        print("turnstream status: set TURNSTREAM_REDIS_URL to the Redis the workers use", file=sys.stderr)
        return 2
    return asyncio.run(_run(settings, args.json, out))


async def _run(settings: Settings, as_json: bool, out: TextIO) -> int:
    from shared.redis_conn import connect

    if problem := await redis_problem(settings.redis_url or ""):
        print(f"turnstream status: {problem}", file=sys.stderr)
        return 1
    redis = await connect(settings)
    try:
        workers = await fleet.live_workers(redis, settings.queue_name)
        queue = QueueStats()
        await queue.refresh(redis, settings.queue_name)
    finally:
        await redis.aclose()
    now = time.time()
    figures = {
        "queue": settings.queue_name,
        "waiting": int(queue.values["turnstream_queue_depth"]),
        "running": int(queue.values["turnstream_queue_running"]),
        "oldest_wait_s": round(queue.values["turnstream_queue_oldest_age_seconds"], 3),
    }
    if as_json:
        rows = [{**w.model_dump(), "last_heartbeat_s": round(max(0.0, now - w.beat_at), 3)} for w in workers]
        print(json.dumps({"workers": rows, **figures}), file=out)
    else:
        _print_table(workers, figures, now, settings.worker_heartbeat_ttl_s, out)
    return 0 if workers else 1


def _print_table(
    workers: list[fleet.WorkerBeat], figures: dict[str, Any], now: float, ttl_s: int, out: TextIO
) -> None:
    if workers:
        print(f"workers: {len(workers)} alive on queue {figures['queue']}", file=out)
        rows = [("ID", "HOST", "RUNNING", "LAST HEARTBEAT")]
        rows += [(w.id, w.host, f"{w.running}/{w.max_jobs}", f"{max(0.0, now - w.beat_at):.1f}s ago") for w in workers]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print("  " + "  ".join(cells).rstrip(), file=out)
    else:
        print(
            f"workers: none alive on queue {figures['queue']} (no heartbeat in the last {ttl_s} s); "
            "start one with `turnstream worker`",
            file=out,
        )
    print(
        f"queue: {figures['waiting']} waiting, oldest wait {figures['oldest_wait_s']:.1f}s; "
        f"{figures['running']} running",
        file=out,
    )
