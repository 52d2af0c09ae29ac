"""A server span per HTTP request while tracing is on, continuing the caller's W3C trace context.

Pure ASGI, so a streamed response's span lasts until its last byte. Probes and scrapes are not traced:
they would be most of the traces and say nothing.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import tracing

_UNTRACED = frozenset({"/metrics", "/healthz", "/readyz"})
_CONTEXT_HEADERS = (b"traceparent", b"tracestate")


class RequestSpans:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.active() or scope["path"] in _UNTRACED:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _CONTEXT_HEADERS}
        attributes = {"http.request.method": method, "url.path": scope["path"], "url.scheme": scope["scheme"]}
        with tracing.server_span(method, headers, attributes) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.fail(str(status))
                await send(message)

            await self.app(scope, receive, send_with_status)
            # The route is known only once routing ran: name the span after its template, as HTTP spans are.
            route = getattr(scope.get("route"), "path", None)
            if route:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
