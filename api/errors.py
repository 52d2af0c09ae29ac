"""Errors in OpenAI's shape, raised only at the HTTP edge.

APIError
 ├─ invalid input ........ 400 invalid_request_error (names the param)
 ├─ previous_response_not_found 400 (a previous_response_id that cannot be used, for any reason)
 ├─ invalid_api_key ...... 401 (missing, wrong or revoked key: api/auth.py)
 ├─ not found ............ 404 invalid_request_error (also every malformed id, and another project's object)
 ├─ request_timeout ...... 408 (the body did not arrive in time; the connection is closed)
 ├─ conversation_locked .. 409 (reject policy and a turn already running)
 ├─ idempotency .......... 409 key still in use / 422 key reused with another body (api/idempotency.py)
 ├─ too large ............ 413
 ├─ rate limited ......... 429 + Retry-After and x-ratelimit-* (requests per minute, concurrent turns)
 └─ unavailable .......... 503 + Retry-After (Redis unreachable, queue full, no live worker: /readyz and
                            creates that wait for their turn, api/live_workers.py)
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import metrics
from shared.redis_conn import UNAVAILABLE

log = logging.getLogger(__name__)


class APIError(Exception):
    """Raised when a request cannot be served; rendered as {"error": {...}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.headers = headers or {}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    return APIError(404, f"{kind} with id '{ident}' not found.", param=param, code="not_found")


def previous_response_not_found(previous: str, reason: str = "") -> APIError:
    # 400 with its own code, as OpenAI and the Open Responses WebSocket section answer: clients recover from
    # it by sending the whole context again. Missing, malformed, another project's and unstored ids alike.
    message = f"Previous response with id '{previous}' not found.{' ' + reason if reason else ''}"
    return APIError(400, message, param="previous_response_id", code="previous_response_not_found")


def store_unavailable() -> APIError:
    # Says nothing about where the store is: the address is for the logs, not for clients.
    return APIError(
        503, "The service's store is unreachable; retry shortly.", type="server_error",
        code="service_unavailable", retry_after=1,
    )


def no_live_workers(queue: str, ttl_s: int, hint: str = "") -> APIError:
    return APIError(
        503,
        f"No worker is alive on queue '{queue}' (none has sent a heartbeat in the last {ttl_s} s): turns would "
        f"wait in the queue. Start one with `turnstream worker`{hint}.",
        type="server_error",
        code="no_live_workers",
        retry_after=5,
    )


# pydantic puts where the value came from and, for unions, the member type into `loc`; neither is a param.
_NOT_PARAMS = frozenset(
    {"body", "query", "path", "header", "str", "int", "float", "bool", "list", "dict", "ConversationRef"}
)
_TYPE_TAG = re.compile(r"[\[\]()]|^function-")


def from_validation(exc: ValidationError | RequestValidationError) -> APIError:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in _NOT_PARAMS and not _TYPE_TAG.search(str(p))]
    param = "".join(f"[{p}]" if p.isdigit() else (f".{p}" if i else p) for i, p in enumerate(loc)) or None
    kind = first.get("type", "")
    if param is None:
        # The body as a whole: absent, or not an object.
        if kind == "missing":
            return invalid("The request body is missing; send a JSON object.", None, "missing_required_parameter")
        return invalid(f"The request body must be a JSON object: {first.get('msg', 'invalid')}.", None)
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return invalid(f"Unknown parameter: '{param}'.", param, "unknown_parameter")
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return invalid(f"Invalid value for '{param}': {message}.", param)


# The first path segment of every /v1 resource, to recognise a URL that left out /v1.
_V1_RESOURCES = ("responses", "conversations", "models", "agui")
_SERVED = "/v1/responses, /v1/conversations, /v1/models and /v1/agui/{model}"


def unknown_path(method: str, path: str) -> str:
    """What a request for a path no route serves is told: the likely mistake, and what is served."""
    if path.rstrip("/").endswith("/chat/completions"):
        return (
            f"turnstream does not serve Chat Completions ({method} {path}); it serves the Responses API: "
            "POST /v1/responses (the openai SDK's client.responses.create)."
        )
    first = path.strip("/").split("/", 1)[0]
    if first in _V1_RESOURCES:
        return (
            f"Unknown path '{path}': every route is under /v1 (did you mean /v1{path}?). "
            "Point the SDK's base_url at http://HOST:PORT/v1."
        )
    return f"Unknown path '{path}' ({method}). This server serves {_SERVED}, under the base URL http://HOST:PORT/v1."


def _render(err: APIError) -> JSONResponse:
    headers = {**err.headers, "Retry-After": str(err.retry_after)} if err.retry_after is not None else dict(err.headers)
    if err.status == 408:
        # The unread rest of the body would otherwise be parsed as the next request on this connection.
        headers["Connection"] = "close"
    body = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _render(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _render(from_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":  # the router's: no route has this path
            return _render(APIError(404, unknown_path(request.method, request.url.path), code="not_found"))
        code = "not_found" if exc.status_code == 404 else None
        return _render(APIError(exc.status_code, str(exc.detail), code=code))

    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        metrics.REDIS_ERRORS.inc()
        services = getattr(request.app.state, "services", None)
        if services is not None:
            services.fanout.redis_failed(exc)  # one line per outage, however many requests it refuses
        else:
            log.warning("redis unavailable: %s", exc)
        return _render(store_unavailable())

    for unavailable in UNAVAILABLE:
        app.add_exception_handler(unavailable, _redis_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _render(APIError(500, "Internal server error.", type="server_error", code="server_error"))
