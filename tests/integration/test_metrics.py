"""Prometheus scrapes of the API and of a worker's metrics port during a small load run: every metric moves."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack, free_port, wait_until
from tests.integration.conftest import wait_for
from tests.integration.own_stack import own_stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

WORKER_PORT = free_port()
SECOND_WORKER_PORT = free_port()


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("metrics")
    with own_stack(root, {"TURNSTREAM_WORKER_METRICS_PORT": str(WORKER_PORT)}) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(metrics_stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=metrics_stack.base_url, api_key="k", max_retries=0, timeout=30) as c:
        yield c


def scrape(url: str) -> Samples:
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_every_metric_moves_during_a_load_run(metrics_stack: Stack, client: OpenAI) -> None:
    api_url, worker_url = f"{metrics_stack.api_url}/metrics", f"http://127.0.0.1:{WORKER_PORT}/metrics"
    api_before, worker_before = scrape(api_url), scrape(worker_url)

    # A streamed turn with a server tool, scraped while its stream is open.
    open_streams: list[float] = []
    with client.responses.create(model="turnstream-mock", input="[delay=40ms] What is the weather in Paris?",
                                 stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta" and not open_streams:
                open_streams.append(value(scrape(api_url), "turnstream_sse_streams_active"))
    client.responses.create(model="turnstream-mock", input='call broken_tool({"reason": "boom"})')
    assert client.responses.create(model="turnstream-mock", input="[fail] hello").status == "failed"

    # Turns wait in the queue while the only worker is stopped.
    worker = metrics_stack.procs["worker-1"]
    worker.send_signal(signal.SIGSTOP)
    try:
        queued = [client.responses.create(model="plain", input="hi", background=True).id for _ in range(3)]
        time.sleep(0.3)
        during = scrape(api_url)
    finally:
        worker.send_signal(signal.SIGCONT)
    for response_id in queued:
        wait_for(client, response_id, {"completed"})

    # Redis drops the worker's idle poll: the worker rides it out and says so.
    redis = metrics_stack.redis.client()
    polls = [c["id"] for c in redis.client_list() if c["cmd"] == "blpop"]
    assert polls
    for client_id in polls:
        redis.client_kill_filter(_id=client_id)
    assert client.responses.create(model="plain", input="after the drop").status == "completed"

    api, worker_samples = scrape(api_url), scrape(worker_url)

    def moved(samples: Samples, before: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    assert open_streams[0] >= 1
    wait_until(lambda: value(scrape(api_url), "turnstream_sse_streams_active") == 0, 10, "the stream to close")
    assert moved(api, api_before, "turnstream_turns_accepted_total", model="turnstream-mock", project="default") == 3
    assert moved(api, api_before, "turnstream_fanout_delivery_lag_seconds_count") > 0
    assert value(during, "turnstream_queue_depth") == 3
    assert value(during, "turnstream_queue_oldest_age_seconds") >= 0.25
    assert value(during, "turnstream_turns_unfinished") == 3
    assert value(api, "turnstream_queue_depth") == 0 and value(api, "turnstream_queue_oldest_age_seconds") == 0

    w, wb = worker_samples, worker_before
    assert moved(w, wb, "turnstream_turns_finished_total", status="completed", model="turnstream-mock") == 2
    assert moved(w, wb, "turnstream_turns_finished_total", status="failed", model="turnstream-mock") == 1
    assert moved(w, wb, "turnstream_turns_finished_total", status="completed", model="plain") == 4
    assert moved(w, wb, "turnstream_queue_wait_seconds_count") == 7
    assert moved(w, wb, "turnstream_queue_wait_seconds_sum") >= 0.25 * 3  # the three that waited
    assert moved(w, wb, "gen_ai_server_time_to_first_token_seconds_count", gen_ai_request_model="plain") == 4
    assert moved(w, wb, "gen_ai_server_time_per_output_token_seconds_count") > 0
    output = dict(gen_ai_token_type="output", gen_ai_request_model="turnstream-mock", project="default")
    assert moved(w, wb, "gen_ai_client_token_usage_sum", **output) > 0
    assert moved(w, wb, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") > 0
    assert moved(w, wb, "gen_ai_client_operation_duration_seconds_count", error_type="") > 0
    assert moved(w, wb, "gen_ai_client_operation_duration_seconds_count", error_type="500") == 1
    assert moved(w, wb, "turnstream_upstream_errors_total", status="500") == 1
    assert moved(w, wb, "turnstream_tool_calls_total", tool="get_weather") == 1
    assert moved(w, wb, "turnstream_tool_duration_seconds_count", tool="get_weather") == 1
    assert moved(w, wb, "turnstream_tool_calls_total", tool="broken_tool") == 1
    assert moved(w, wb, "turnstream_tool_errors_total", tool="broken_tool") == 1
    assert moved(w, wb, "turnstream_tool_errors_total", tool="get_weather") == 0
    assert moved(w, wb, "turnstream_redis_errors_total") > 0
    assert moved(w, wb, "turnstream_redis_reconnects_total") > 0


def test_a_rerun_is_counted_by_the_worker_that_runs_it(metrics_stack: Stack, client: OpenAI) -> None:
    with client.responses.create(model="plain", input="[delay=20ms] count to 200", stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break
        metrics_stack.stop("worker-1", kill=True)
    metrics_stack.spawn("worker-2", "worker", env={"TURNSTREAM_WORKER_METRICS_PORT": str(SECOND_WORKER_PORT)})
    url = f"http://127.0.0.1:{SECOND_WORKER_PORT}/metrics"

    wait_until(lambda: value(scrape(url), "turnstream_turns_finished_total", model="plain") == 1, 30, "the re-run")

    samples = scrape(url)
    assert value(samples, "turnstream_turn_reruns_total", model="plain", project="default") == 1
    # The first token came from the first attempt: the re-run does not time it again.
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_count") == 0


def test_api_metrics_answer_while_redis_is_down(metrics_stack: Stack) -> None:
    """The last test of the module: it stops Redis for good."""
    metrics_stack.redis.proc.kill()
    metrics_stack.redis.proc.wait()

    response = httpx.get(f"{metrics_stack.api_url}/metrics", timeout=10)

    assert response.status_code == 200
    assert "turnstream_queue_depth NaN" in response.text
    assert "turnstream_turns_accepted_total" in response.text
