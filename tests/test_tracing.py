"""One trace per turn, in process: HTTP request -> invoke_agent -> chat -> execute_tool -> chat.

The embedded stack of tests/test_cli.py (API, worker and mock model on one loop) with the SDK's
InMemorySpanExporter; tests/integration/test_tracing_processes.py checks the same across processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.settings import Settings
from tests.test_cli import STARTUP_TIMEOUT_S, Stack, _listening_socket, _StackThread, _wait_until_ready

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    # As shared.tracing.configure does, minus the export: the global provider is what FastAPI's request
    # spans use. A process sets it once, so it stays; shutting it down stops it recording after this module.
    trace.set_tracer_provider(PROVIDER)
    tracing.use(PROVIDER)
    yield EXPORTER
    tracing.use(None)
    PROVIDER.shutdown()


@pytest.fixture(scope="module")
def traced_stack(exporter: InMemorySpanExporter) -> Iterator[Stack]:
    api_sock, mock_sock = _listening_socket(), _listening_socket()
    mock_port = mock_sock.getsockname()[1]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        agents="worker.default_agents",
        port=api_sock.getsockname()[1],
        mock_port=mock_port,
        openai_base_url=f"http://127.0.0.1:{mock_port}/v1",
        upstream_retry_budget_s=0.2,  # a failing upstream fails the turn without retries
    )
    thread = _StackThread(settings, api_sock, mock_sock)
    thread.start()
    try:
        assert thread.started_up.wait(STARTUP_TIMEOUT_S) and thread.error is None
        assert thread.loop is not None and thread.embedded is not None
        stack = Stack(settings, thread.embedded, thread.loop)
        _wait_until_ready(stack, thread)
        yield stack
    finally:
        thread.stop()
        api_sock.close()
        mock_sock.close()


def _spans_of_trace(exporter: InMemorySpanExporter, trace_id: int, names: set[str]) -> list[ReadableSpan]:
    """The trace's spans, once every name in `names` has ended (spans end after the response is sent)."""
    deadline = time.monotonic() + 10
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if names <= {s.name for s in spans} or time.monotonic() > deadline:
            return sorted(spans, key=lambda s: s.start_time or 0)
        time.sleep(0.05)


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_turn_with_a_tool_is_one_trace_from_the_http_request(
    traced_stack: Stack, exporter: InMemorySpanExporter
) -> None:
    with httpx.Client(base_url=traced_stack.v1, timeout=30) as http:
        conversation = http.post("/conversations", json={}).json()["id"]
        created = http.post(
            "/responses",
            json={"model": "turnstream-mock", "input": "What is the weather in Paris?", "conversation": conversation},
        )
    assert created.status_code == 200 and created.json()["status"] == "completed"
    response_id = created.json()["id"]
    [request] = [
        s for s in exporter.get_finished_spans()
        if s.name == "POST /v1/responses" and s.attributes and s.attributes.get("http.response.status_code") == 200
    ]
    spans = _spans_of_trace(
        exporter, request.context.trace_id, {"invoke_agent turnstream-mock", "execute_tool get_weather"}
    )

    agent = _one(spans, "invoke_agent turnstream-mock")
    chats = [s for s in spans if s.name == "chat turnstream-mock"]
    tool = _one(spans, "execute_tool get_weather")
    assert request.kind == SpanKind.SERVER and request.parent is None
    assert _attrs(request)["http.route"] == "/v1/responses"
    assert _attrs(request)["http.response.status_code"] == 200
    assert agent.parent is not None and agent.parent.span_id == request.context.span_id
    assert {"gen_ai.operation.name": "invoke_agent", "gen_ai.response.id": response_id,
            "gen_ai.conversation.id": conversation, "turnstream.attempt": 1,
            "turnstream.status": "completed"}.items() <= _attrs(agent).items()
    # model call -> tool -> second model call, each a child of the attempt
    assert [s.name for s in spans if s.parent and s.parent.span_id == agent.context.span_id] == [
        "chat turnstream-mock", "execute_tool get_weather", "chat turnstream-mock"
    ]
    assert chats[0].end_time <= tool.start_time and tool.end_time <= chats[1].start_time  # type: ignore[operator]
    for chat in chats:
        attrs = _attrs(chat)
        assert chat.kind == SpanKind.CLIENT
        assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "turnstream-mock"
        assert attrs["gen_ai.conversation.id"] == conversation
        assert str(attrs["gen_ai.response.id"]).startswith("chatcmpl")
        assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert _attrs(chats[0])["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert _attrs(chats[1])["gen_ai.response.finish_reasons"] == ("stop",)
    assert _attrs(tool)["gen_ai.tool.name"] == "get_weather" and str(_attrs(tool)["gen_ai.tool.call.id"])


def test_a_callers_trace_context_is_continued(traced_stack: Stack, exporter: InMemorySpanExporter) -> None:
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    traceparent = f"00-{trace_id:032x}-00f067aa0ba902b7-01"
    created = httpx.post(
        f"{traced_stack.v1}/responses", json={"model": "turnstream-mock", "input": "hello"},
        headers={"traceparent": traceparent}, timeout=30,
    )
    assert created.status_code == 200

    spans = _spans_of_trace(exporter, trace_id, {"POST /v1/responses", "invoke_agent turnstream-mock"})

    request = _one(spans, "POST /v1/responses")
    assert request.parent is not None and request.parent.span_id == 0x00F067AA0BA902B7
    assert _one(spans, "invoke_agent turnstream-mock").parent.span_id == request.context.span_id  # type: ignore[union-attr]


def test_a_failed_model_call_marks_its_spans_as_errors(traced_stack: Stack, exporter: InMemorySpanExporter) -> None:
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    created = httpx.post(
        f"{traced_stack.v1}/responses", json={"model": "turnstream-mock", "input": "[fail] hello"},
        headers={"traceparent": f"00-{trace_id:032x}-b7ad6b7169203331-01"}, timeout=30,
    )
    assert created.json()["status"] == "failed"

    spans = _spans_of_trace(exporter, trace_id, {"chat turnstream-mock", "invoke_agent turnstream-mock"})

    chat, agent = _one(spans, "chat turnstream-mock"), _one(spans, "invoke_agent turnstream-mock")
    assert _attrs(chat)["error.type"] == "500" and not chat.status.is_ok
    assert _attrs(agent)["turnstream.status"] == "failed" and not agent.status.is_ok


def test_probes_and_the_playground_are_not_traced(traced_stack: Stack, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    paths = ("/readyz", "/metrics", "/", "/playground/playground.js")  # probes, the playground's page and files
    for path in paths:
        assert httpx.get(f"{traced_stack.root}{path}").status_code == 200
    # Only these requests' spans count: an earlier test's turn may still end its own spans meanwhile.
    ours = [span.name for span in exporter.get_finished_spans() if span.name.split(" ")[-1] in paths
            or (span.attributes or {}).get("url.path") in paths]
    assert ours == []


def test_the_turn_stores_its_trace_context_only_while_tracing_is_on(
    traced_stack: Stack, exporter: InMemorySpanExporter
) -> None:
    def accepted_traceparent() -> str | None:
        body = {"model": "turnstream-mock", "input": "hi", "background": True}
        response_id = httpx.post(f"{traced_stack.v1}/responses", json=body, timeout=30).json()["id"]
        record = traced_stack.call(_load(traced_stack, response_id))
        return record.request.traceparent

    traced = accepted_traceparent()
    tracing.use(None)
    try:
        untraced = accepted_traceparent()
    finally:
        tracing.use(PROVIDER)
    assert traced is not None and traced.startswith("00-") and untraced is None


async def _load(stack: Stack, response_id: str) -> Any:
    from shared import response_record

    redis = stack.embedded.client(stack.settings)
    try:
        return await response_record.load(redis, response_id)
    finally:
        await redis.aclose()
