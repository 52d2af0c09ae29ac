"""Every JSON request body is read and decoded here, once, before FastAPI validates it against its model.

Routers that take bodies use `JSONBodyRoute`. For a route with a body it reads the body whole (413 past
`TURNSTREAM_MAX_INPUT_BYTES` without buffering more, 408 if it does not arrive within
`TURNSTREAM_BODY_READ_TIMEOUT_S`) and decodes it as standard JSON only (400): no NaN/Infinity, no lone
surrogates, no invalid UTF-8, nesting at most `TURNSTREAM_MAX_JSON_DEPTH` deep. FastAPI then gets the
decoded value instead of parsing the bytes again with the lenient `json` module, which accepts NaN and lone
surrogates and raises RecursionError on deep nesting.
"""

from __future__ import annotations

import asyncio
import email.message
import re
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from api.errors import APIError, invalid
from shared.settings import Settings

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

_NON_STANDARD_NUMBER = re.compile(rb"-?(?:NaN|Infinity)")


class JSONBodyRoute(APIRoute):
    """An APIRoute whose body, if it takes one, is read and decoded by this module."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # A body sent with no Content-Type at all is decoded as JSON too; any other type than JSON is
        # refused in `_check_content_type`.
        kwargs["strict_content_type"] = False
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Handler:
        handle = super().get_route_handler()
        if self.body_field is None:
            return handle

        async def read_then_handle(request: Request) -> Response:
            settings: Settings = request.app.state.services.settings
            raw = await read_body(request, settings.max_input_bytes, settings.body_read_timeout_s)
            if raw:
                _check_content_type(request.headers.get("content-type"))
            decoded = decode(raw, settings.max_json_depth) if raw else None
            return await handle(_ReadRequest(request, raw, decoded))

        return read_then_handle


class _ReadRequest(Request):
    """The request as FastAPI's handler sees it: body already read, JSON already decoded."""

    def __init__(self, request: Request, raw: bytes, decoded: Any) -> None:
        super().__init__(request.scope, request.receive)
        self._raw = raw
        self._decoded = decoded

    async def body(self) -> bytes:
        return self._raw

    async def json(self) -> Any:
        return self._decoded


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    raw = bytearray()
    try:
        # One deadline for the whole body: a client trickling a byte a second is cut as well as a silent one.
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > max_bytes:
                    raise _too_large(max_bytes)
    except TimeoutError:
        raise APIError(
            408, f"The request body did not arrive within {timeout_s:g} seconds.", code="request_timeout"
        ) from None
    except ClientDisconnect:
        raise invalid("The connection closed before the request body was complete.", code="incomplete_body") from None
    return bytes(raw)


def decode(raw: bytes, max_depth: int) -> Any:
    """Standard JSON only, nested at most `max_depth` arrays/objects deep; anything else is a 400."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _not_json(raw, exc, max_depth) from None
    if _nests_deeper_than(value, max_depth):
        raise _too_deep(max_depth)
    return value


def _nests_deeper_than(value: Any, limit: int) -> bool:
    # Level by level, not recursively: a recursive walk is what this module exists to avoid. orjson builds
    # exact dicts and lists, so `type(...) in` is safe and twice as fast as isinstance on a 1 MB body.
    containers = (dict, list)
    level = [value] if type(value) in containers else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) in containers
        ]
    return False


def _not_json(raw: bytes, exc: orjson.JSONDecodeError, max_depth: int) -> APIError:
    if exc.msg == "depth limit exceeded":
        return _too_deep(max_depth)
    # orjson points at the value, or just past a leading minus sign.
    window = raw[max(exc.pos - 1, 0) : exc.pos + 9]
    if _NON_STANDARD_NUMBER.search(window):
        reason = "NaN, Infinity and -Infinity are not JSON numbers"
    elif "UTF-8" in exc.msg:
        reason = "it must be UTF-8 text, and it has bytes that are not (or an encoded surrogate)"
    elif "surrogate" in exc.msg:
        reason = "strings must be valid Unicode, and a lone surrogate such as \\ud800 is not"
    else:
        reason = exc.msg
    return invalid(f"The request body is not valid JSON: {reason} (at byte {exc.pos}).", code="invalid_json")


def _too_deep(max_depth: int) -> APIError:
    return invalid(f"The request body nests arrays and objects deeper than {max_depth} levels.", code="invalid_json")


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"Request body exceeds the limit of {max_bytes} bytes.", code="too_large")


def _check_content_type(value: str | None) -> None:
    if value is None:
        return
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise invalid(
            f"Unsupported Content-Type '{value}': send the body as application/json.", code="unsupported_content_type"
        )
