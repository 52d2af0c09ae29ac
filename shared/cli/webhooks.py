"""`turnstream webhooks add|list|remove`: a project's webhook endpoints, kept in Redis.

An operator's tool: it talks to Redis directly (TURNSTREAM_REDIS_URL), as the workers that deliver do.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

from shared import webhooks
from shared.models import DEFAULT_PROJECT
from shared.settings import Settings


def register(sub: Any) -> None:
    """Adds the `webhooks` command to the CLI's subcommands."""
    parser = sub.add_parser("webhooks", help="signed webhook endpoints (Standard Webhooks); needs a Redis URL")
    commands = parser.add_subparsers(dest="webhooks_command", required=True)
    add = commands.add_parser("add", help="register an endpoint; prints its signing secret last")
    add.add_argument("--url", required=True, help="where to POST events (http or https)")
    add.add_argument(
        "--events", nargs="+", choices=webhooks.EVENT_TYPES, default=list(webhooks.EVENT_TYPES), metavar="EVENT",
        help=f"events to send (default: all): {', '.join(webhooks.EVENT_TYPES)}",
    )
    commands.add_parser("list", help="list endpoints (secrets are not shown)")
    remove = commands.add_parser("remove", help="remove an endpoint; its pending deliveries are dropped")
    remove.add_argument("endpoint_id")
    for command in (add, commands.choices["list"], remove):
        command.add_argument("--project", default=DEFAULT_PROJECT, help="the project the endpoints belong to")
    parser.set_defaults(handler=run)


def run(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if not settings.redis_url:
        print("turnstream webhooks: set TURNSTREAM_REDIS_URL to the Redis the workers use", file=sys.stderr)
        return 2
    return asyncio.run(_run(settings, args, out))


async def _run(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from shared.redis_conn import connect

    redis = await connect(settings)
    try:
        if args.webhooks_command == "add":
            try:
                endpoint = await webhooks.add_endpoint(
                    redis, args.project, args.url, args.events, settings.webhook_max_endpoints
                )
            except webhooks.WebhookError as exc:
                print(f"turnstream webhooks: {exc}", file=sys.stderr)
                return 2
            print(f"endpoint {endpoint.id} (project {args.project}): {endpoint.url}", file=out)
            print(f"events: {' '.join(endpoint.events)}", file=out)
            print("signing secret (verify every delivery with it):", file=out)
            print(endpoint.secret, file=out)
        elif args.webhooks_command == "list":
            for endpoint in await webhooks.list_endpoints(redis, args.project):
                print(f"{endpoint.id}  {endpoint.url}  {' '.join(endpoint.events)}", file=out)
        elif not await webhooks.remove_endpoint(redis, args.project, args.endpoint_id):
            print(f"turnstream webhooks: no endpoint {args.endpoint_id} in project {args.project}", file=sys.stderr)
            return 1
        else:
            print(f"removed {args.endpoint_id}", file=out)
        return 0
    finally:
        await redis.aclose()
