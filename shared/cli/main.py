"""The `turnstream` command.

This is the composition root: the one module that knows both the API and the worker, importing each
only inside the command that runs it. The API and the worker never import each other.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shared.cli import webhooks
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from shared.redis_conn import EmbeddedRedis


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="turnstream", description="Chat-agent turns on a Redis-backed worker fleet.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="API + worker + mock model in one process (embedded Redis unless a URL is set)")
    sub.add_parser("api", help="serve the HTTP API")
    worker = sub.add_parser("worker", help="run a worker")
    worker.add_argument("--check", action="store_true", help="exit 0 if a worker heartbeat is recent")
    sub.add_parser("mock", help="serve the built-in mock model")
    chat = sub.add_parser("chat", help="chat in the terminal, streaming token by token")
    chat.add_argument("--url", default=None, help="API base URL (default: this machine's API)")
    chat.add_argument("--model", default=None)
    tail = sub.add_parser("tail", help="print a response's events as they come")
    tail.add_argument("response_id")
    tail.add_argument("--after", type=int, default=-1, help="start after this sequence number")
    tail.add_argument("--url", default=None, help="read through the API's SSE instead of Redis")
    webhooks.register(sub)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    try:
        if args.command == "dev":
            asyncio.run(_dev(settings))
        elif args.command == "api":
            asyncio.run(_api(settings))
        elif args.command == "worker":
            sys.exit(_worker_check(settings) if args.check else _worker(settings))
        elif args.command == "mock":
            from shared.mock.server import serve

            asyncio.run(serve(settings.host, settings.mock_port, settings.mock_token_delay_ms))
        elif args.command == "chat":
            from shared.cli.chat import run_chat

            run_chat(args.url or f"http://{settings.host}:{settings.port}/v1", args.model or settings.default_model)
        elif args.command == "webhooks":
            sys.exit(args.handler(settings, args))
        elif args.command == "tail":
            from shared.cli.tail import run_tail

            asyncio.run(run_tail(settings, args.response_id, args.after, args.url))
    except KeyboardInterrupt:
        pass


async def _serve_api(settings: Settings, embedded: EmbeddedRedis | None = None) -> None:
    import uvicorn

    from api.app import create_app

    app = create_app(settings, embedded)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)
    await uvicorn.Server(config).serve()


async def _api(settings: Settings) -> None:
    await _serve_api(settings)


def _worker(settings: Settings) -> int:
    from worker.service import build_worker

    build_worker(settings).run()
    return 0


def _worker_check(settings: Settings) -> int:
    import socket

    from arq.worker import async_check_health

    from shared import keys
    from shared.redis_conn import redis_settings

    # The worker refreshes its own key every 30 s (health_check_interval in worker/service.py).
    key = keys.worker_health(settings.queue_name, socket.gethostname())
    return asyncio.run(async_check_health(redis_settings(settings), key, settings.queue_name))


async def _dev(settings: Settings) -> None:
    from shared.mock.server import serve as serve_mock
    from shared.redis_conn import EmbeddedRedis, connect, patch_arq_for_fakeredis
    from worker.service import build_worker

    embedded = EmbeddedRedis() if settings.redis_url is None else None
    if embedded is not None:
        patch_arq_for_fakeredis()
    worker = build_worker(settings, await connect(settings, embedded), handle_signals=False)
    base = f"http://{settings.host}:{settings.port}"
    where = "embedded in-process Redis (nothing persists)" if embedded else settings.redis_url
    upstream = settings.openai_base_url or f"built-in mock model on :{settings.mock_port}"
    print(
        f"\nturnstream dev: API on {base}/v1, {where}, upstream {upstream}\n"
        f"  try:  curl -s {base}/v1/responses -H 'Content-Type: application/json' "
        "-d '{\"model\": \"turnstream-mock\", \"input\": \"My name is Ravi.\"}'\n"
        f"  or:   turnstream chat --url {base}/v1\n",
        flush=True,
    )
    tasks = [_serve_api(settings, embedded), worker.async_run()]
    if settings.openai_base_url is None:
        tasks.append(serve_mock(settings.host, settings.mock_port, settings.mock_token_delay_ms))
    try:
        await asyncio.gather(*tasks)
    finally:
        await worker.close()
