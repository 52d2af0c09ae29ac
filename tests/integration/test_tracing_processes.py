"""Tracing across processes: the API and the workers export over OTLP/HTTP to a local collector stand-in,
and a turn's spans from every process, a re-run on another worker included, form one trace."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from openai import OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import Stack, free_port
from tests.integration.own_stack import own_stack


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]


class Collector(ThreadingHTTPServer):
    """Receives OTLP/HTTP protobuf exports, as an OpenTelemetry collector would."""

    def __init__(self, port: int) -> None:
        self.spans: list[ExportedSpan] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def trace(self, trace_id: str) -> list[ExportedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    spans.append(ExportedSpan(resource.get("service.name", ""), span.name, span.trace_id.hex(),
                                              span.span_id.hex(), span.parent_span_id.hex(), attributes))
        with self.server.lock:
            self.server.spans += spans
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _value(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("tracing")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s instead of 5 s
    }
    with own_stack(root, env) as stack:
        yield stack


def _wait_for_trace(collector: Collector, trace_id: str, names: set[str]) -> list[ExportedSpan]:
    deadline = time.monotonic() + 20
    while True:
        spans = collector.trace(trace_id)
        if names <= {s.name for s in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def _traceparent(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}


def test_one_trace_spans_the_api_the_worker_the_model_and_the_tool(traced_stack: Stack, collector: Collector) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with OpenAI(base_url=traced_stack.base_url, api_key="k", max_retries=0) as client:
        response = client.responses.create(
            model="turnstream-mock", input="What is the weather in Tokyo?", extra_headers=_traceparent(trace_id)
        )
    assert response.status == "completed"

    spans = _wait_for_trace(collector, trace_id, {"POST /v1/responses", "invoke_agent turnstream-mock"})

    by_name = {s.name: s for s in spans}
    request, agent = by_name["POST /v1/responses"], by_name["invoke_agent turnstream-mock"]
    assert (request.service, agent.service) == ("turnstream-api", "turnstream-worker")
    assert request.parent_id == "00f067aa0ba902b7" and agent.parent_id == request.span_id
    children = [s.name for s in spans if s.parent_id == agent.span_id]
    assert sorted(children) == ["chat turnstream-mock", "chat turnstream-mock", "execute_tool get_weather"]
    assert agent.attributes["gen_ai.response.id"] == response.id


def test_a_rerun_on_another_worker_joins_the_trace(traced_stack: Stack, collector: Collector) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with OpenAI(base_url=traced_stack.base_url, api_key="k", max_retries=0) as client:
        with client.responses.create(
            model="plain", input="[delay=20ms] count to 150", stream=True, extra_headers=_traceparent(trace_id)
        ) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    break
            traced_stack.stop("worker-1", kill=True)
        traced_stack.spawn("worker-2", "worker")

        spans = _wait_for_trace(collector, trace_id, {"POST /v1/responses", "invoke_agent plain"})

    request = next(s for s in spans if s.name == "POST /v1/responses")
    [rerun] = [s for s in spans if s.name == "invoke_agent plain"]  # the killed attempt's span never ended
    assert rerun.attributes["turnstream.attempt"] == 2
    assert rerun.attributes["turnstream.status"] == "completed"
    assert rerun.parent_id == request.span_id
    assert any(s.name == "chat turnstream-mock" and s.parent_id == rerun.span_id for s in spans)
