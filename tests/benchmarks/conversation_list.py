"""How `GET /v1/conversations` pages cost as a project's index grows: the listing's own read path
(conversation_record.list_page over shared/conversation_index.py) against a redis-server of its own, at the
head of the list and deep in it.

    .venv/bin/python tests/benchmarks/conversation_list.py [--conversations 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time

import redis
from measure import free_port, percentile
from redis.asyncio import Redis

from shared import conversation_record, ids, keys

PROJECT = "bench"
PAGES = 200


def fill(client: redis.Redis, n: int) -> list[str]:
    made = []
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        conversation_id = ids.conversation_id()
        stored = {"id": conversation_id, "object": "conversation", "created_at": i, "metadata": {}, "project": PROJECT}
        pipe.set(keys.conversation(conversation_id), json.dumps(stored))
        pipe.zadd(keys.project_conversations(PROJECT), {conversation_id: i})
        made.append(conversation_id)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    return made


async def measure(port: int, label: str, after: str | None) -> None:
    client = Redis(port=port)
    times = []
    for _ in range(PAGES):
        started = time.perf_counter()
        page = await conversation_record.list_page(client, PROJECT, limit=20, order="desc", after=after)
        times.append((time.perf_counter() - started) * 1000)
    await client.aclose()
    p50, p99 = percentile(times, 50), percentile(times, 99)
    print(f"{label:>28}: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(page.data)} items)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=1_000_000)
    args = parser.parse_args()
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            started = time.time()
            made = fill(client, args.conversations)
            print(f"{args.conversations} conversations indexed in {time.time() - started:.1f} s")
            asyncio.run(measure(port, "first page (limit 20)", None))
            deep = made[len(made) // 10]  # 90% of the way down, newest first
            asyncio.run(measure(port, "page 90% down (limit 20)", deep))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
