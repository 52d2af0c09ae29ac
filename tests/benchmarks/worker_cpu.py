"""Worker CPU per upstream chunk, against a bare `openai` SDK streaming loop over the same chunks.

Both read the same upstream: a minimal raw SSE server (its own process, not code under test) that streams
N one-token chunks per completion, back to back or spaced. The bare loop is what a hand-written client
costs (`async for chunk in await client.chat.completions.create(stream=True)`); the worker does the whole
turn (claim, history, stream, merge and write every event to Redis, commit). CPU is read from
/proc/<pid>/stat of the worker process, and from `time.process_time()` inside the bare loop, so process
start-up is not counted. Printed: CPU per chunk for each, their ratio, and the target beside it.

    .venv/bin/python tests/benchmarks/worker_cpu.py [--turns 40] [--chunks 200] [--concurrency 10] [--tree PATH]

`--tree` runs the worker from another checkout (e.g. an older commit) to compare before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from measure import cpu_seconds, free_port

ROOT = Path(__file__).resolve().parents[2]

# A request whose messages contain "chunks=N spacing=MS" gets that many chunks at that spacing instead of the
# command line's, so one upstream serves short and long turns side by side. The first content chunk goes out
# with the role chunk: the upstream's own first-token time is one local HTTP exchange.
_UPSTREAM = r'''
import asyncio, json, re, sys
CHUNKS, SPACING = int(sys.argv[2]), float(sys.argv[3])
ASKED = re.compile(rb"chunks=(\d+) spacing=([\d.]+)")

def frame(obj):
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

def chunk(delta, finish=None):
    return frame({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
                  "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

def body(chunks):
    head = chunk({"role": "assistant", "content": ""}) + chunk({"content": "t0 "})
    tail = (chunk({}, "stop") + frame({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
            "model": "bench", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": chunks,
            "total_tokens": chunks + 5}}) + b"data: [DONE]\n\n")
    return [head] + [chunk({"content": f"t{i} "}) for i in range(1, chunks)] + [tail]

DEFAULT = body(CHUNKS)

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            request = await reader.readexactly(length)
            if head.startswith(b"GET"):
                reply = b'{"object":"list","data":[]}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(reply)).encode() + b"\r\n\r\n" + reply)
                continue
            asked = ASKED.search(request)
            pieces, spacing = (body(int(asked[1])), float(asked[2])) if asked else (DEFAULT, SPACING)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i, piece in enumerate(pieces):
                if spacing and i:
                    await writer.drain()
                    await asyncio.sleep(spacing / 1000)
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''

_BARE = r'''
import asyncio, sys, time
from openai import AsyncOpenAI
base, turns, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

async def one(client, sem, counts):
    async with sem:
        stream = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": "go"}], stream=True,
            stream_options={"include_usage": True})
        text = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
                counts[0] += 1

async def main():
    client = AsyncOpenAI(base_url=base, api_key="x", max_retries=0)
    await one(client, asyncio.Semaphore(1), [0])  # warm up: connection, imports
    counts, sem = [0], asyncio.Semaphore(concurrency)
    cpu = time.process_time()
    await asyncio.gather(*(one(client, sem, counts) for _ in range(turns)))
    print(time.process_time() - cpu, counts[0])

asyncio.run(main())
'''




def wait(check: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError(what)


def bare_loop(base: str, turns: int, concurrency: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _BARE, base, str(turns), str(concurrency)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]) / int(out[1])


def worker_run(tree: Path, base: str, turns: int, concurrency: int, chunks: int, workdir: Path) -> float:
    """Worker CPU seconds per chunk for `turns` turns of `chunks` chunks, `concurrency` at a time."""
    rport, aport = free_port(), free_port()
    rserver = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(rport), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_"))}
    env.update(
        TURNSTREAM_REDIS_URL=f"redis://127.0.0.1:{rport}/0",
        TURNSTREAM_PORT=str(aport),
        OPENAI_BASE_URL=base,
        OPENAI_API_KEY="x",
        TURNSTREAM_AUTH="off",
        TURNSTREAM_MAX_OUTPUT_BYTES=str(10 * chunks + 1000),
    )
    procs = []
    try:
        wait(lambda: redis.Redis(port=rport).ping(), "redis")
        for args in (["worker"], ["api"]):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", "from shared.cli import main; main()", *args],
                    cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )
        api = f"http://127.0.0.1:{aport}/v1"
        wait(lambda: len(redis.Redis(port=rport).hkeys("turnstream:agents")) > 0, "worker")
        wait(lambda: httpx.get(f"{api}/models").status_code == 200, "api")
        model = "turnstream-mock-notools"

        async def drive(n: int) -> None:
            sem = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(timeout=120) as http:

                async def one() -> None:
                    async with sem:
                        r = await http.post(f"{api}/responses", json={"model": model, "input": "go"})
                        assert r.json()["status"] == "completed", r.text

                await asyncio.gather(*(one() for _ in range(n)))

        asyncio.run(drive(2))  # warm up
        before = cpu_seconds(procs[0].pid)
        asyncio.run(drive(turns))
        return (cpu_seconds(procs[0].pid) - before) / (turns * chunks)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        rserver.terminate()
        rserver.wait()


@contextlib.contextmanager
def raw_upstream(chunks: int, spacing_ms: float) -> Iterator[str]:
    """A raw SSE upstream in its own process; yields its OpenAI base URL."""
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", _UPSTREAM, str(port), str(chunks), str(spacing_ms)])
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait(lambda: httpx.get(f"{base}/models").status_code == 200, "upstream")
        yield base
    finally:
        upstream.terminate()
        upstream.wait()


@dataclass
class CpuPerChunk:
    spacing_ms: float
    bare_s: float  # CPU seconds per chunk, median of the repeats
    worker_s: float
    target_ratio: float

    @property
    def ratio(self) -> float:
        return self.worker_s / self.bare_s


TARGETS = {0.0: 0.4, 20.0: 0.75}  # chunk spacing (ms) -> worker/bare CPU ratio to stay under


def measure(turns: int, chunks: int, concurrency: int, repeats: int, tree: Path = ROOT) -> list[CpuPerChunk]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spacing, target in TARGETS.items():
            with raw_upstream(chunks, spacing) as base:
                bare, work = [], []
                for _ in range(repeats):  # interleaved, so drift on this noisy machine hits both alike
                    bare.append(bare_loop(base, turns, concurrency))
                    work.append(worker_run(tree, base, turns, concurrency, chunks, Path(tmp)))
                results.append(CpuPerChunk(spacing, statistics.median(bare), statistics.median(work), target))
    return results


def print_table(results: list[CpuPerChunk]) -> None:
    print(f"{'spacing':>8} {'bare SDK µs/chunk':>18} {'worker µs/chunk':>16} {'ratio':>7} {'target':>7}")
    for r in results:
        print(f"{r.spacing_ms:>6g}ms {r.bare_s * 1e6:>18.1f} {r.worker_s * 1e6:>16.1f} {r.ratio:>6.2f}x"
              f" {r.target_ratio:>6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose worker to run")
    args = parser.parse_args()
    print(f"worker from {args.tree}; {args.turns} turns x {args.chunks} chunks, {args.concurrency} at a time")
    print_table(measure(args.turns, args.chunks, args.concurrency, args.repeats, args.tree))


if __name__ == "__main__":
    main()
