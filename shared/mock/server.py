"""The built-in mock model: an OpenAI-compatible Chat Completions endpoint over shared.mock.brain.

It speaks the real wire format so the worker's openai-SDK path is exercised end to end in dev and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.ids import call_id
from shared.mock import request_options
from shared.mock.brain import (
    Directives,
    Reply,
    count_tokens,
    decide,
    is_continuation,
    last_user_text,
    offered_tool_names,
    parse_directives,
    prompt_tokens,
    reasoning,
    tokenize,
)
from shared.mock.faults import FaultCues

MODEL_ID = "turnstream-mock"
_MODEL_CREATED = 1_700_000_000
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# Argument fragment sizes cycle through these so a client must really reassemble them.
_FRAGMENT_SIZES = (4, 7, 5, 8, 6)
# [fail-midstream] breaks the stream after this many content or argument chunks.
_MIDSTREAM_FAIL_AFTER = 3
# [silent] holds a stream open without a byte for this long, unless the client gives up first.
_SILENT_S = 300.0


class MockUpstreamFailure(RuntimeError):
    """Raised inside a stream on purpose so the client sees the connection drop without [DONE]."""


class _DropOnMidstreamFailure:
    """Swallows the deliberate failure: uvicorn then closes the half-sent response without a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(MockUpstreamFailure):
            await self.app(scope, receive, send)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class _ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    body: dict[str, Any]  # every option as sent, for tool_choice, response_format and [echo-request]


@dataclass(frozen=True)
class _Plan:
    reply: Reply
    text_tokens: list[str]  # the answer's content, or its refusal when reply.refusal is set
    finish_reason: str
    usage: dict[str, Any]
    reasoning_tokens: list[str]  # streamed first, under reasoning_key
    reasoning_key: str | None


def create_app(token_delay_ms: float = 15.0, context_tokens: int = 128_000) -> FastAPI:
    # Not traced: in `turnstream dev` it shares the process's tracer provider, and a stand-in model's
    # spans would only clutter the turns' traces.
    app = FastAPI(
        title="turnstream mock model", docs_url=None, redoc_url=None, openapi_url=None, telemetry={"tracing": False}
    )
    app.add_middleware(_DropOnMidstreamFailure)
    # Streams currently producing; lets tests prove a client disconnect really stops generation.
    app.state.active_streams = 0
    cues = FaultCues()

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        model = {"id": MODEL_ID, "object": "model", "created": _MODEL_CREATED, "owned_by": "turnstream"}
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            chat = _parse_request(await request.body())
        except _BadRequest as exc:
            return _error_response(400, exc.message, "invalid_request_error", exc.param)
        used = prompt_tokens(chat.messages)
        if used > context_tokens:
            message = (
                f"This model's maximum context length is {context_tokens} tokens. "
                f"However, your messages resulted in {used} tokens."
            )
            return _error_response(400, message, "invalid_request_error", "messages", "context_length_exceeded")
        directives = parse_directives(chat.messages)
        if directives.fail or (directives.fail_midstream and not chat.stream):
            return _error_response(500, "mock upstream failure", "server_error", None)
        continuing = is_continuation(chat.messages, chat.body.get("continue_final_message") is True)
        fault = cues.next(last_user_text(chat.messages), continuation=continuing)
        if fault.status is not None:
            return JSONResponse(fault.body(), status_code=fault.status, headers=fault.headers)
        plan = _plan(chat, directives)
        delay_ms = directives.delay_ms if directives.delay_ms is not None else token_delay_ms
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        if not chat.stream:
            return JSONResponse(_completion(chat, plan, completion_id, created))
        delay_s = delay_ms / 1000.0
        fail_after = _MIDSTREAM_FAIL_AFTER if directives.fail_midstream else fault.cut_after
        chunks = _silence() if fault.silent else _stream(app, chat, plan, completion_id, created, delay_s, fail_after)
        return StreamingResponse(
            chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


def _parse_request(raw: bytes) -> _ChatRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BadRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON."
        ) from exc
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array.", "messages")
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _BadRequest("'tools' must be an array.", "tools")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _BadRequest("Each tool must be a function with a string name.", f"tools[{i}]")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _BadRequest("'stream_options' must be an object.", "stream_options")
    include_usage = bool(options and options.get("include_usage") is True)
    max_tokens: int | None = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _BadRequest(f"'{key}' must be a positive integer.", key)
        max_tokens = value if max_tokens is None else min(max_tokens, value)
    try:
        request_options.check(body)
    except request_options.BadOption as exc:
        raise _BadRequest(str(exc), exc.param) from exc
    return _ChatRequest(model, messages, tools, bool(stream), include_usage, max_tokens, body)


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise _BadRequest(f"'{where}' must be an object.", where)
    if message.get("role") not in _ROLES:
        raise _BadRequest(f"'{where}.role' must be one of {sorted(_ROLES)}.", f"{where}.role")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise _BadRequest(f"'{where}.content' must be a string or an array.", f"{where}.content")
    if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _BadRequest(f"'{where}.tool_call_id' is required for tool messages.", f"{where}.tool_call_id")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise _BadRequest(f"'{where}.tool_calls' must be an array.", f"{where}.tool_calls")


def _plan(chat: _ChatRequest, directives: Directives) -> _Plan:
    if directives.echo_request:
        reply = Reply(text=json.dumps(chat.body, sort_keys=True))
    else:
        # vLLM's continue_final_message: the last (assistant) message is a cut-off answer to go on from.
        continuation = chat.body.get("continue_final_message") is True
        offered = request_options.offered(chat.body, chat.tools)
        reply = decide(chat.messages, offered, continue_final_message=continuation)
        reply = request_options.apply_tool_choice(reply, chat.body, offered_tool_names(chat.tools), call_id)
        if reply.text is not None and not reply.tool_calls:
            reply = Reply(text=request_options.shaped_text(reply.text, chat.body))
    finish_reason = "tool_calls" if reply.tool_calls else "stop"
    tokens = tokenize(reply.refusal or reply.text or "") if not reply.tool_calls else []
    if chat.max_tokens is not None and len(tokens) > chat.max_tokens:
        tokens = tokens[: chat.max_tokens]
        finish_reason = "length"
    if reply.tool_calls:
        completion = sum(count_tokens(f"{c.name} {c.arguments}") for c in reply.tool_calls)
    else:
        completion = count_tokens("".join(tokens))
    thought = tokenize(reasoning(chat.messages)) if directives.reasoning_key else []
    completion += len(thought)  # reasoning tokens are output tokens, itemised in completion_tokens_details
    prompt = prompt_tokens(chat.messages)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": len(thought)},
    }
    return _Plan(reply, tokens, finish_reason, usage, thought, directives.reasoning_key)


def _tool_calls_json(reply: Reply) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in reply.tool_calls
    ]


def _completion(chat: _ChatRequest, plan: _Plan, completion_id: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if plan.reply.tool_calls:
        message["tool_calls"] = _tool_calls_json(plan.reply)
    elif plan.reply.refusal is not None:
        message["refusal"] = "".join(plan.text_tokens)
    else:
        message["content"] = "".join(plan.text_tokens)
    if plan.reasoning_key:
        message[plan.reasoning_key] = "".join(plan.reasoning_tokens)
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "system_fingerprint": None,
        "choices": [choice],
        "usage": plan.usage,
    }


def _fragments(text: str) -> list[str]:
    pieces: list[str] = []
    position = 0
    while position < len(text):
        size = _FRAGMENT_SIZES[len(pieces) % len(_FRAGMENT_SIZES)]
        pieces.append(text[position : position + size])
        position += size
    return pieces


async def _stream(
    app: FastAPI,
    chat: _ChatRequest,
    plan: _Plan,
    completion_id: str,
    created: int,
    delay_s: float,
    fail_after: int | None,
) -> AsyncIterator[str]:
    """The completion's chunks; with `fail_after`, the stream breaks off after that many content pieces."""
    def chunk(delta: Mapping[str, Any], finish_reason: str | None = None) -> str:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": chat.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if chat.include_usage:
            data["usage"] = None
        return f"data: {_compact(data)}\n\n"

    # Each piece is a delta to send after one token delay; the list is cheap even for "count to 5000".
    key = plan.reasoning_key
    pieces: list[dict[str, Any]] = [{key: token} for token in plan.reasoning_tokens] if key else []
    answer_key = "refusal" if plan.reply.refusal is not None else "content"
    pieces += [{answer_key: token} for token in plan.text_tokens]
    for index, call in enumerate(plan.reply.tool_calls):
        function = {"name": call.name, "arguments": ""}
        opening = {"index": index, "id": call.id, "type": "function", "function": function}
        pieces.append({"tool_calls": [opening]})
        pieces.extend(
            {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
            for fragment in _fragments(call.arguments)
        )

    app.state.active_streams += 1
    try:
        yield chunk({"role": "assistant", "content": None if plan.reply.tool_calls else ""})
        for sent, delta in enumerate(pieces):
            if fail_after is not None and sent >= fail_after:
                raise MockUpstreamFailure("mock upstream failure mid-stream")
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            yield chunk(delta)
        if fail_after is not None:
            raise MockUpstreamFailure("mock upstream failure mid-stream")
        yield chunk({}, plan.finish_reason)
        if chat.include_usage:
            usage = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chat.model,
                "system_fingerprint": None,
                "choices": [],
                "usage": plan.usage,
            }
            yield f"data: {_compact(usage)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        app.state.active_streams -= 1


async def _silence() -> AsyncIterator[str]:
    """A stream whose headers were sent and that then says nothing (a provider that hangs)."""
    await asyncio.sleep(_SILENT_S)
    return
    yield  # an async generator that yields nothing


def _compact(data: Mapping[str, Any]) -> str:
    # OpenAI's own stream is compact JSON; matching it keeps byte-level client parsers honest.
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _error_response(
    status: int, message: str, error_type: str, param: str | None, code: str | None = None
) -> JSONResponse:
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status)
