"""Reading a Chat Completions stream raw: each SSE `data:` line parsed with orjson into a plain dict.

The SDK's own stream builds a pydantic model per chunk (~155 µs of CPU per chunk measured here, 96 µs of
it in `construct_type`); orjson parses the same line in a few µs, and a turn reads every chunk. The SDK
still does everything else: building and authenticating the request, and its typed
errors (`APIStatusError` and friends) for a non-2xx answer, raised before the first line is read. Its
own retries are off (worker/upstreams.py): the turn retries, and can continue a cut stream (worker/upstream_retry.py).

Chat Completions streams put one JSON object on each `data:` line and end with `data: [DONE]` (OpenAI,
Azure, vLLM, Ollama, llama.cpp); other SSE fields and comments carry nothing a turn needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from openai import APIConnectionError, APIError, AsyncOpenAI

Chunk = dict[str, Any]


class StreamCut(APIConnectionError):
    """The connection broke off after the stream began: what was streamed stands, the rest is missing."""

_DRAIN_S = 1.0  # a server that keeps the body open after [DONE] is not waited for longer than this


async def chat_chunks(client: AsyncOpenAI, request: dict[str, Any]) -> AsyncIterator[Chunk]:
    """The chunks of one streamed completion; leaving the iteration closes the HTTP stream at once.

    `request` is the body as plain JSON data (worker/upstream_request.py), `extra_body` included.
    """
    # Passed as typed parameters, the body would go through the SDK's TypedDict transform, which walks every
    # message and tool to change nothing here (~1 ms of CPU per call measured, growing with the history).
    # As `extra_body` it is sent as is; the two parameters the SDK insists on are typed, and the body
    # overrides them.
    body = {k: v for k, v in request.items() if k != "extra_body"} | request.get("extra_body", {})
    async with client.chat.completions.with_streaming_response.create(
        model=body["model"], messages=[], stream=True, extra_body=body
    ) as response:
        lines = response.iter_lines()
        while True:
            try:
                line = await anext(lines)
            except StopAsyncIteration:
                return
            except Exception as exc:
                # A connection cut mid-stream surfaces as the SDK's HTTP client's own error; report it the
                # way the SDK reports a connection that failed before the stream began.
                raise StreamCut(
                    message=f"the upstream stream broke off ({type(exc).__name__})",
                    request=response.http_response.request,
                ) from exc
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                await _drain(lines)
                return
            chunk = orjson.loads(data)
            if isinstance(chunk, dict) and chunk.get("error"):
                # Some servers report a failure mid-stream as a chunk; the SDK raises it, so do we.
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else None
                raise APIError(
                    message if isinstance(message, str) else "upstream error during streaming",
                    response.http_response.request,
                    body=error,
                )
            yield chunk


async def _drain(lines: AsyncIterator[str]) -> None:
    """Reads the end of the body after [DONE]: a response read to its end leaves its connection to the next
    request, where one closed early takes it down (a new TCP connection per turn measured ~10% of a
    worker's CPU)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_DRAIN_S):
            async for _ in lines:
                pass
