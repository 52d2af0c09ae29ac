"""`turnstream keys create | list | revoke`: API keys and their projects, straight in Redis.

`create` prints the secret once, as the last line of stdout, so a script takes it with `tail -1`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from pydantic import ValidationError

from shared.api_keys import ApiKey, KeyStore, check_project
from shared.models import DEFAULT_PROJECT
from shared.redis_conn import connect
from shared.settings import Settings


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (in the Redis of TURNSTREAM_REDIS_URL)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key and print its secret (last line)")
    create.add_argument("--project", required=True, help="the project whose objects the key sees")
    create.add_argument("--name", default="", help="a label to recognise the key by")
    create.add_argument("--rpm", type=_positive, default=None, help="requests per minute (default from settings)")
    create.add_argument("--max-concurrent", type=_positive, default=None, help="queued + running turns at once")
    listing = actions.add_parser("list", help="keys, their limits and use, and token usage per project and day")
    listing.add_argument("--days", type=_positive, default=7, help="days of usage to show (default 7)")
    revoke = actions.add_parser("revoke", help="revoke a key at once, on every API node")
    revoke.add_argument("key", metavar="SECRET_OR_ID")


def run(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    if settings.redis_url is None:
        print("turnstream keys: set TURNSTREAM_REDIS_URL to the Redis the API uses", file=sys.stderr)
        return 2
    return asyncio.run(_run(settings, args, out or sys.stdout))


async def _run(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    redis = await connect(settings)
    store = KeyStore(redis, settings)
    try:
        if args.keys_command == "create":
            return await _create(store, args, out)
        if args.keys_command == "list":
            await _list(store, args.days, out)
            return 0
        revoked = await store.revoke(args.key)
        if revoked is None:
            print("turnstream keys: no such key", file=sys.stderr)
            return 1
        print(f"revoked {revoked.id} (project {revoked.project})", file=out)
        return 0
    finally:
        await redis.aclose()


async def _create(store: KeyStore, args: argparse.Namespace, out: TextIO) -> int:
    try:
        check_project(args.project)
    except ValidationError:
        print("turnstream keys: --project must be 1-64 letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    key, secret = await store.create(args.project, args.name, args.rpm, args.max_concurrent)
    print(
        f"created {key.id} for project {key.project}: {key.rpm} requests/min, "
        f"{key.max_concurrent} concurrent turns{f', name {key.name!r}' if key.name else ''}",
        file=out,
    )
    print("the secret follows; it is shown only this once", file=out)
    print(secret, file=out, flush=True)
    return 0


async def _list(store: KeyStore, days: int, out: TextIO) -> None:
    found = await store.list_keys()
    _table(
        ["ID", "PROJECT", "NAME", "RPM", "CONCURRENT", "IN FLIGHT", "REQUESTS", "CREATED", "LAST USED", "SOURCE"],
        [_key_row(k) for k in found],
        out,
    )
    rows = []
    for project in sorted({k.project for k in found} | {DEFAULT_PROJECT}):
        for day in await store.usage(project, days):
            rows.append([project, day.day.isoformat(), day.turns, day.input_tokens, day.output_tokens])
    print(file=out)
    _table(["PROJECT", "DAY (UTC)", "TURNS", "INPUT TOKENS", "OUTPUT TOKENS"], rows, out)


def _key_row(key: ApiKey) -> list[object]:
    return [
        key.id, key.project, key.name or "-", key.rpm, key.max_concurrent, key.in_flight, key.requests,
        _when(key.created), _when(key.last_used), "seeded" if key.seeded else "cli",
    ]


def _when(epoch_s: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch_s)) if epoch_s else "never"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO) -> None:
    cells = [list(header), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value
