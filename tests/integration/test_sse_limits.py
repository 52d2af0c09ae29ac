"""SSE limits of one API process: a cap on open streams, and a client that stops reading is dropped.

Each test runs its own API process whose queue no worker reads, so a created response stays in progress
while the test plays the worker's part, appending events to its stream in the stream contract's format.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from shared import keys
from tests.conftest import Stack, free_port, wait_until

M = "turnstream-mock"


@dataclass
class LoneAPI:
    base: str
    pid: int
    rds: redis.Redis

    def create(self) -> str:
        """A response stored and queued, that no worker will pick up; its stream holds response.created."""
        reply = httpx.post(f"{self.base}/v1/responses", json={"model": M, "input": "hi", "background": True})
        assert reply.status_code == 200, reply.text
        return str(reply.json()["id"])

    def append(self, response_id: str, count: int, delta: str) -> int:
        """Appends `count` text deltas as a worker would; returns the last sequence number."""
        seq = int(self.rds.hget(keys.response(response_id), "seq") or 0)
        pipe = self.rds.pipeline(transaction=False)
        for _ in range(count):
            seq += 1
            data = json.dumps(
                {"sequence_number": seq, "type": "response.output_text.delta", "item_id": "msg_t", "output_index": 0,
                 "content_index": 0, "delta": delta, "logprobs": []}
            )
            fields = {"seq": seq, "type": "response.output_text.delta", "attempt": 1, "data": data}
            pipe.xadd(keys.events(response_id), fields, id=f"{seq}-1")  # type: ignore[arg-type]
        pipe.hset(keys.response(response_id), "seq", seq)
        pipe.execute()
        return seq

    def stream_status(self, response_id: str) -> httpx.Response:
        """Opens the stream and returns the reply with its headers only (the body is left unread)."""
        with httpx.stream("GET", f"{self.base}/v1/responses/{response_id}?stream=true", timeout=10) as reply:
            if reply.status_code != 200:
                reply.read()
            return reply

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@contextmanager
def lone_api(stack: Stack, rds: redis.Redis, **settings: str) -> Iterator[LoneAPI]:
    port = free_port()
    env = {"TURNSTREAM_PORT": str(port), "TURNSTREAM_QUEUE_NAME": f"turnstream:unread-{port}", **settings}
    proc = stack.spawn(f"api-sse-{port}", "api", env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/readyz?exclude=workers").status_code == 200, 30, "the API")
        yield LoneAPI(base, proc.pid, rds)
    finally:
        stack.stop(f"api-sse-{port}")


@contextmanager
def open_stream(base: str, response_id: str) -> Iterator[httpx.Response]:
    """A live SSE stream, open once its first event (the replayed response.created) has arrived."""
    with httpx.stream("GET", f"{base}/v1/responses/{response_id}?stream=true", timeout=10) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        assert next(lines) == "id: 0"
        yield reply


def test_a_stream_past_the_cap_gets_503_with_retry_after_and_a_refused_create_commits_nothing(
    stack: Stack, rds: redis.Redis
) -> None:
    with lone_api(stack, rds, TURNSTREAM_MAX_SSE_STREAMS="2") as api, ExitStack() as streams:
        response_id = api.create()
        for _ in range(2):
            streams.enter_context(open_stream(api.base, response_id))
        responses_before = len(rds.keys(keys.response("*")))

        refused = api.stream_status(response_id)
        refused_create = httpx.post(f"{api.base}/v1/responses", json={"model": M, "input": "hi", "stream": True})

        for reply in (refused, refused_create):
            assert reply.status_code == 503
            assert int(reply.headers["retry-after"]) > 0
            error = reply.json()["error"]
            assert error["code"] == "too_many_streams" and error["type"] == "server_error"
            assert set(error) == {"message", "type", "param", "code"} and "2" in error["message"]
        assert len(rds.keys(keys.response("*"))) == responses_before
        streams.close()
        # A stream that ended gives its place back.
        wait_until(lambda: api.stream_status(response_id).status_code == 200, 10, "a freed stream slot")


def _dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP response, as far as it arrived."""
    body = bytearray()
    rest = raw.split(b"\r\n\r\n", 1)[1]
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep or not size_line:
            break
        size = int(size_line, 16)
        body += rest[:size]
        rest = rest[size + 2 :]
    return bytes(body)


def _read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the socket still gives; and whether the server closed it (False: it went quiet instead)."""
    sock.settimeout(timeout_s)
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return bytes(data), False
    return bytes(data), True


def test_a_client_that_stops_reading_is_dropped_with_memory_bounded_and_can_resume(
    stack: Stack, rds: redis.Redis
) -> None:
    clients, events, delta = 5, 20_000, "x" * 500  # 10 MB of stream per client, in events of a usual size
    with lone_api(stack, rds, TURNSTREAM_SSE_STALL_TIMEOUT_S="1", TURNSTREAM_MAX_SSE_STREAMS=str(clients)) as api:
        response_id = api.create()
        last_seq = api.append(response_id, events, delta)
        stream_bytes = events * len(delta)
        rss_before = api.rss_mb()
        sockets = []
        for _ in range(clients):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that has stopped reading
            sock.connect(("127.0.0.1", int(api.base.rsplit(":", 1)[1])))
            sock.sendall(f"GET /v1/responses/{response_id}?stream=true HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            sockets.append(sock)

        # Every stalled stream is dropped and gives its place back: as many fresh streams fit as the cap.
        peak_rss = rss_before
        deadline = time.monotonic() + 60
        with ExitStack() as fresh:
            admitted = 0
            while admitted < clients:
                assert time.monotonic() < deadline, "stalled clients were not dropped"
                peak_rss = max(peak_rss, api.rss_mb())
                if api.stream_status(response_id).status_code == 200:
                    fresh.enter_context(open_stream(api.base, response_id))
                    admitted += 1
                else:
                    time.sleep(0.2)

        for sock in sockets:
            received, closed = _read_until_closed(sock, timeout_s=10)
            sock.close()
            assert closed, "the server kept a stalled client's stream open"
            assert len(received) < stream_bytes / 2
        # Holding a whole stream per client would take clients x 10 MB at least.
        assert peak_rss - rss_before < 0.5 * clients * stream_bytes / 1e6

        # The dropped client resumes after the last whole event it got: no gap, no duplicate.
        frames = _dechunk(received).split(b"\n\n")[:-1]
        got = [int(line[4:]) for frame in frames for line in frame.split(b"\n") if line.startswith(b"id: ")]
        assert got == list(range(len(got)))
        with httpx.stream(
            "GET", f"{api.base}/v1/responses/{response_id}?stream=true",
            headers={"Last-Event-ID": str(got[-1])}, timeout=10,
        ) as resumed:
            ids: list[int] = []
            for line in resumed.iter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                    if ids[-1] == last_seq:
                        break
        assert ids == list(range(got[-1] + 1, last_seq + 1))
