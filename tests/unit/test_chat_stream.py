"""Reading an upstream's Chat Completions stream raw, over a real socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from openai import AsyncOpenAI, DefaultAioHttpClient

from shared.settings import Settings
from worker import chat_stream
from worker.chat_stream import chat_chunks
from worker.service import upstream_client

REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _sse(*payloads: str) -> bytes:
    return b"".join(f"data: {p}\n\n".encode() for p in payloads)


@dataclass
class Upstream:
    """A minimal HTTP/1.1 server streaming two chunks and [DONE]; it counts connections and bodies."""

    hold_open: bool = False  # keep the body open after [DONE], as a misbehaving server might
    connections: int = 0
    bodies: list[dict[str, object]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.bodies.append(json.loads(await reader.readexactly(length)))
                body = _sse('{"choices":[{"index":0,"delta":{"content":"a"}}]}',
                            '{"choices":[{"index":0,"delta":{"content":"b"}}]}', "[DONE]")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%b\r\n" % (len(body), body))
                if self.hold_open:
                    await writer.drain()
                    await asyncio.sleep(30)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture(params=["aiohttp", "httpx"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Upstream, AsyncOpenAI]]:
    """A worker's client on either transport (TURNSTREAM_UPSTREAM_HTTP_CLIENT), and the server it calls."""
    state = Upstream()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(_env_file=None, openai_base_url=f"http://127.0.0.1:{port}/v1",  # type: ignore[call-arg]
                        upstream_http_client=request.param)
    client = upstream_client(settings)
    yield state, client
    await client.close()
    server.close()


async def texts(client: AsyncOpenAI, request: dict[str, object] = REQUEST) -> list[str]:
    return [chunk["choices"][0]["delta"]["content"] async for chunk in chat_chunks(client, request)]


async def test_turns_one_after_another_share_one_connection(upstream: tuple[Upstream, AsyncOpenAI]) -> None:
    state, client = upstream

    results = [await texts(client) for _ in range(3)]

    assert results == [["a", "b"]] * 3
    assert state.connections == 1


async def test_the_body_is_sent_as_built_with_extra_body_merged(upstream: tuple[Upstream, AsyncOpenAI]) -> None:
    state, client = upstream

    await texts(client, {**REQUEST, "temperature": 0.5, "extra_body": {"continue_final_message": True}})

    assert state.bodies == [{**REQUEST, "temperature": 0.5, "continue_final_message": True}]


async def test_a_body_held_open_after_done_is_not_waited_for(
    upstream: tuple[Upstream, AsyncOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, client = upstream
    state.hold_open = True
    monkeypatch.setattr(chat_stream, "_DRAIN_S", 0.1)

    async with asyncio.timeout(5):
        assert await texts(client) == ["a", "b"]


def test_the_transport_is_the_one_the_settings_name() -> None:
    aiohttp_client = upstream_client(Settings(_env_file=None, upstream_http_client="aiohttp"))  # type: ignore[call-arg]
    httpx_client = upstream_client(Settings(_env_file=None, upstream_http_client="httpx"))  # type: ignore[call-arg]

    # The SDK keeps its HTTP client private; the type is all there is to tell the transports apart.
    assert isinstance(aiohttp_client._client, DefaultAioHttpClient)
    assert not isinstance(httpx_client._client, DefaultAioHttpClient)
