"""Distributed tracing with OpenTelemetry: off unless the standard OTEL_* variables turn it on.

When off, the OpenTelemetry SDK is not imported and every span is one shared do-nothing object, so the
cost is an attribute check. When on, this sets the process's tracer provider, and a turn's trace is: the
API's HTTP request span (FastAPI's own, continuing the caller's `traceparent` if it sent one) -> one
`invoke_agent` span per attempt -> a `chat` span per upstream call and an `execute_tool` span per server
tool. The API stores its request's trace context
with the turn (`TurnRequest.traceparent`), so each attempt, on any worker, re-runs included, joins it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

from shared.settings import Settings

SpanKind = Literal["client", "internal"]

_tracer: Any = None  # an opentelemetry Tracer while tracing is on


class _NoSpan:
    """What every span is while tracing is off."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def fail(self, error_type: str, description: str = "") -> None:
        pass

    def end(self) -> None:
        pass


NO_SPAN = _NoSpan()


class Span:
    """An OpenTelemetry span with the one error convention used here (error.type + ERROR status)."""

    __slots__ = ("otel",)

    def __init__(self, otel: Any) -> None:
        self.otel = otel

    def set_attribute(self, key: str, value: Any) -> None:
        if value is not None:
            self.otel.set_attribute(key, value)

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.otel.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def update_name(self, name: str) -> None:
        self.otel.update_name(name)

    def fail(self, error_type: str, description: str = "") -> None:
        from opentelemetry.trace import Status, StatusCode

        self.otel.set_attribute("error.type", error_type)
        self.otel.set_status(Status(StatusCode.ERROR, description or error_type))

    def end(self) -> None:
        self.otel.end()


AnySpan = Span | _NoSpan


def configure(settings: Settings, service_name: str) -> bool:
    """Turns tracing on for this process if the settings ask for it; returns whether it is on."""
    exporter_name = settings.tracing_exporter
    if exporter_name is None or _tracer is not None:
        return _tracer is not None  # `turnstream dev` runs the API and a worker in one process: one provider
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otel_traces_url)
    resource = Resource.create({"service.name": settings.otel_service_name or service_name})
    provider = TracerProvider(resource=resource)
    # Batched off the event loop: a span's end costs a queue append, the export runs on its own thread.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    use(provider)
    return True


def use(provider: Any) -> None:
    """Sends this process's spans to `provider` (an SDK TracerProvider); None turns tracing off."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("turnstream")


def active() -> bool:
    return _tracer is not None


def start_span(
    name: str,
    *,
    kind: SpanKind = "internal",
    parent: AnySpan | str | None = None,
    attributes: dict[str, Any] | None = None,
) -> AnySpan:
    """A started span (end it yourself), child of a span, of a W3C `traceparent`, or of the current context."""
    if _tracer is None:
        return NO_SPAN
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind as OtelKind

    context = None
    if isinstance(parent, Span):
        context = trace.set_span_in_context(parent.otel)
    elif isinstance(parent, str):
        context = _extract({"traceparent": parent})
    span = _tracer.start_span(
        name,
        context=context,
        kind=getattr(OtelKind, kind.upper()),
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
    )
    return Span(span)


@contextlib.contextmanager
def current(span: AnySpan) -> Iterator[None]:
    """Makes `span` the current one inside the block, so what runs there (a tool's own calls) nests under it."""
    if not isinstance(span, Span):
        yield
        return
    from opentelemetry import trace

    with trace.use_span(span.otel, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to store with work that continues elsewhere."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def _extract(headers: dict[str, str]) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(headers)
