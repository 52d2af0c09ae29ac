"""Redis memory per finished turn, with finished turns stored compact and as they were streamed, in one run.

For each storage form it starts a redis-server, the mock model, an API and a worker (tests/integration's
own_stack), then runs the workload: 500 short turns over 100 conversations, then 50 streamed turns of 200
words (`count to 200`, one on each of 50 of those conversations). Redis' `used_memory` is read (after
the turns have all finished) before and after each phase; the delta over the phase's turn count is the
figure, client buffers left out (they belong to connections, not turns), and so is the first turn of each
conversation (it also makes the conversation's keys). A breakdown by key kind (MEMORY USAGE of every key)
shows where the bytes are.

Stored is what a turn leaves for its retention. A conversation's live feed also holds a copy of each of its
turns' events while it lasts (TURNSTREAM_CONVERSATION_FEED_TTL_S after its last event, 10 minutes by
default); here it lasts FEED_TTL_S, and each phase is read twice: at its end, feeds included ("with the
live feed"), and once the feeds have expired ("stored").

    .venv/bin/python tests/benchmarks/memory_per_turn.py [--short 500] [--conversations 100] [--streamed 50]

The "as streamed" column runs with `TURNSTREAM_COMPACT_FINISHED_TURNS=false`: one stream entry per event
and plain JSON in the record, the form every turn had before compaction.
Not a pytest test: the figures depend on the Redis version and allocator.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import openai
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared import keys  # noqa: E402  (the repository root is put on the path just above)
from tests.integration.own_stack import own_stack  # noqa: E402

MODEL = "turnstream-mock"
SHORT_PROMPT = "My name is Ravi."
STREAMED_PROMPT = "count to 200"
TARGET_SHORT_B = 4_600
TARGET_STREAMED_B = 22_000
FEED_TTL_S = 3
# The mock's default pace (15 ms a token, 20 ms coalescing window): deltas as a real model's would be written.
MOCK_TOKEN_DELAY_MS = "15"


@dataclass
class Figures:
    short_b: float = 0.0  # stored
    streamed_b: float = 0.0
    short_live_b: float = 0.0  # at the phase's end, the live feeds still held
    streamed_live_b: float = 0.0
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> key kind -> bytes per turn


def kind_of(key: str) -> str:
    """The key's kind: `response`, `events`, `conversation:items`, ... (ids dropped)."""
    rest = key.removeprefix(keys.PREFIX)
    head, _, tail = rest.partition(":")
    if head == "conversation":
        return "conversation" + (":" + tail.split(":", 1)[1] if ":" in tail else "")
    return head


async def memory_by_kind(redis: aioredis.Redis) -> dict[str, int]:
    out: collections.Counter[str] = collections.Counter()
    async for key in redis.scan_iter(count=1000):
        used = await redis.memory_usage(key, samples=0)
        out[kind_of(key.decode())] += used or 0
    return dict(out)


async def used_memory(redis: aioredis.Redis) -> int:
    """used_memory less the clients' buffers: those hold the last big command or reply of each connection for
    a while, by tens of KB, and are no turn's."""
    await asyncio.sleep(1.0)
    info = await redis.info("memory")
    return int(info["used_memory"]) - int(info["mem_clients_normal"])


async def feeds_expired(redis: aioredis.Redis) -> None:
    """Waits out the feeds' TTL, then reads each feed key so Redis drops it now rather than when its sampling
    of expired keys gets to it."""
    await asyncio.sleep(FEED_TTL_S + 1)
    async for key in redis.scan_iter(match=f"{keys.CONVERSATION_PREFIX}*:events*", count=1000):
        await redis.exists(key)


async def run_phase(jobs: list, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(job) -> None:  # type: ignore[no-untyped-def]
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


async def workload(base_url: str, redis_url: str, args: argparse.Namespace) -> Figures:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    redis = aioredis.Redis.from_url(redis_url)
    figures = Figures()
    try:
        conversations = [(await client.conversations.create()).id for _ in range(args.conversations)]

        async def short(conversation: str) -> None:
            response = await client.responses.create(model=MODEL, input=SHORT_PROMPT, conversation=conversation)
            assert response.status == "completed", response.status

        async def streamed(conversation: str) -> None:
            async with await client.responses.create(
                model=MODEL, input=STREAMED_PROMPT, conversation=conversation, stream=True
            ) as stream:
                async for event in stream:
                    last = event
            assert last.type == "response.completed", last.type

        # Every conversation once first, so the phases measure turns, not conversations' first keys.
        await run_phase([lambda c=c: short(c) for c in conversations], args.concurrency)
        await feeds_expired(redis)
        before_kinds, before = await memory_by_kind(redis), await used_memory(redis)
        rest = args.short - args.conversations
        jobs = [lambda i=i: short(conversations[i % len(conversations)]) for i in range(rest)]
        await run_phase(jobs, args.concurrency)
        live_kinds, live = await memory_by_kind(redis), await used_memory(redis)
        await feeds_expired(redis)
        after_kinds, after = await memory_by_kind(redis), await used_memory(redis)
        figures.short_b, figures.short_live_b = (after - before) / rest, (live - before) / rest
        figures.by_kind["short"] = {k: (live_kinds.get(k, 0) - before_kinds.get(k, 0)) / rest for k in live_kinds}
        before_kinds, before = after_kinds, after
        jobs = [lambda i=i: streamed(conversations[i % len(conversations)]) for i in range(args.streamed)]
        await run_phase(jobs, args.concurrency)
        live_kinds, live = await memory_by_kind(redis), await used_memory(redis)
        await feeds_expired(redis)
        after = await used_memory(redis)
        figures.streamed_b, figures.streamed_live_b = (after - before) / args.streamed, (live - before) / args.streamed
        figures.by_kind["streamed"] = {
            k: (live_kinds.get(k, 0) - before_kinds.get(k, 0)) / args.streamed for k in live_kinds
        }
    finally:
        await client.close()
        await redis.aclose()
    return figures


def measure(compact: bool, args: argparse.Namespace) -> Figures:
    env = {
        "TURNSTREAM_COMPACT_FINISHED_TURNS": "true" if compact else "false",
        "TURNSTREAM_MOCK_TOKEN_DELAY_MS": MOCK_TOKEN_DELAY_MS,
        "TURNSTREAM_MAX_OUTPUT_BYTES": "1000000",
        "TURNSTREAM_CONVERSATION_FEED_TTL_S": str(FEED_TTL_S),
    }
    with tempfile.TemporaryDirectory(prefix="turnstream-memory-") as root, own_stack(Path(root), env) as stack:
        return asyncio.run(workload(stack.base_url, stack.redis.url, args))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=500, help="short turns, the first one per conversation unmeasured")
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--streamed", type=int, default=50, help="streamed 200-word turns")
    parser.add_argument("--concurrency", type=int, default=10)
    return parser.parse_args(argv)


def report(forms: dict[str, Figures], argv: list[str]) -> bool:
    """Prints the figures side by side; True when the compact form meets both targets."""
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    print("Redis memory per finished turn (used_memory less client buffers: delta / turns)")
    print(f"  command: {shlex.join([sys.executable, *argv])}")
    print(f"  redis:   {version}")
    names = list(forms)
    print(f"\n  {'bytes per turn':<34}" + "".join(f"{n:>14}" for n in names) + f"{'target':>10}")
    rows = (
        ("short turn, stored", "short_b", f"{TARGET_SHORT_B:,}"),
        ("  with the live feed", "short_live_b", ""),
        ("streamed 200-word turn, stored", "streamed_b", f"{TARGET_STREAMED_B:,}"),
        ("  with the live feed", "streamed_live_b", ""),
    )
    for label, attr, target in rows:
        print(f"  {label:<34}" + "".join(f"{getattr(f, attr):>14,.0f}" for f in forms.values()) + f"{target:>10}")
    for phase in ("short", "streamed"):
        print(f"\n  {phase} turn at the phase's end, by key kind (MEMORY USAGE, bytes per turn)")
        kinds = sorted({k for f in forms.values() for k in f.by_kind[phase]})
        for kind in kinds:
            values = [f.by_kind[phase].get(kind, 0.0) for f in forms.values()]
            if any(abs(v) >= 1 for v in values):
                print(f"    {kind:<32}" + "".join(f"{v:>14,.0f}" for v in values))
    compact = forms["compact"]
    met = compact.short_b <= TARGET_SHORT_B and compact.streamed_b <= TARGET_STREAMED_B
    print(f"\n  compact form {'meets' if met else 'MISSES'} the targets")
    return met


def main() -> int:
    args = parse_args(sys.argv[1:])
    os.chdir(ROOT)
    forms = {"as streamed": measure(False, args), "compact": measure(True, args)}
    return 0 if report(forms, sys.argv) else 1


if __name__ == "__main__":
    sys.exit(main())
