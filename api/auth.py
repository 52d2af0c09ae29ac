"""Who is calling: the API key behind `Authorization: Bearer`, its project, and its limits.

The app runs `authenticate` on every route; only the routes in OPEN_ROUTES (the probes) go without a
key, so a new route is closed until it is listed there. A missing, wrong or revoked key gets the same
401 before any object is looked at, so it tells nothing about which ids exist. Nothing is cached: a
revoked key fails on every node at its next request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import ServicesDep
from api.errors import APIError
from shared.api_keys import digest
from shared.models import DEFAULT_PROJECT
from shared.rate_limits import RequestBudget

_BUDGET = "request_budget"  # where authenticate leaves the key's budget for RequestBudgetHeaders

# Matched by route template, not by URL, so a proxy's path prefix (root_path) cannot open or close them.
# "/" is the playground page: static, holding no data; it asks the person for a key when the API needs one.
OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/"})


@dataclass(frozen=True)
class Caller:
    project: str
    key_id: str | None = None  # None when keys are off
    max_concurrent: int = 0


OPEN = Caller(DEFAULT_PROJECT)


async def authenticate(request: HTTPConnection, svc: ServicesDep) -> Caller:
    """Checks the key and counts the request (or WebSocket handshake) against its requests-per-minute budget."""
    if svc.limiter is None or getattr(request.scope.get("route"), "path", None) in OPEN_ROUTES:
        return OPEN
    secret = _bearer(request.headers.get("authorization"))
    if secret is None:
        raise _unauthorized(
            "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
            f"(Authorization: Bearer YOUR_KEY). {MAKE_A_KEY}"
        )
    found = await svc.limiter.authorize(digest(secret))
    if found is None:
        raise _unauthorized(f"Incorrect API key provided. {MAKE_A_KEY}")
    setattr(request.state, _BUDGET, found.budget)
    if not found.allowed:
        retry_s = max(1, math.ceil(found.budget.retry_after_ms / 1000))
        raise APIError(
            429,
            f"Rate limit reached for requests per minute (RPM): limit {found.budget.limit}. "
            f"Please try again in {retry_s}s.",
            type="requests",
            code="rate_limit_exceeded",
            retry_after=retry_s,
        )
    return Caller(found.project, found.key_id, found.max_concurrent)


CallerDep = Annotated[Caller, Depends(authenticate)]

# Where keys come from, for whoever reads a 401: the service's operator makes them.
MAKE_A_KEY = "Keys are made with `turnstream keys create --project NAME` on a machine that reaches the API's Redis."


def _bearer(header: str | None) -> str | None:
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def budget_headers(budget: RequestBudget) -> dict[str, str]:
    """OpenAI's request rate-limit headers."""
    return {
        "x-ratelimit-limit-requests": str(budget.limit),
        "x-ratelimit-remaining-requests": str(budget.remaining),
        "x-ratelimit-reset-requests": duration(budget.reset_ms),
    }


def duration(ms: int) -> str:
    """OpenAI's duration format: "20ms", "1.5s", "1m0s"."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    minutes, seconds = divmod(ms / 1000, 60)
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{text}s" if minutes else f"{text}s"


class RequestBudgetHeaders:
    """Adds the key's x-ratelimit-* headers to every /v1 answer, streams and errors included.

    Plain ASGI rather than an HTTP middleware: that one would buffer nothing here, but it runs the rest of
    the app in another task and costs more per request than the headers are worth.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Request.state writes into scope["state"]; holding the dict sees what authenticate puts there.
        state = scope.setdefault("state", {})

        async def send_with_budget(message: Message) -> None:
            budget = state.get(_BUDGET)
            if message["type"] == "http.response.start" and budget is not None:
                MutableHeaders(scope=message).update(budget_headers(budget))
            await send(message)

        await self.app(scope, receive, send_with_budget)
