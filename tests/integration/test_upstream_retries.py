"""A turn outlives its model provider's bad minute: retries that honour Retry-After, streams continued after a
cut, waits spent back on the queue, fallback upstreams with a fleet-wide cooldown.

Every case runs through the real pipeline (redis-server, API, workers and the mock as processes, the SDK
over HTTP); the mock fails on cue (shared/mock/faults.py). Each message carries a fresh id, so the mock's
count of requests for it starts from zero.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from openai import OpenAI

from shared import keys
from shared.stored_form import decode_entries
from tests.conftest import Stack, free_port, wait_until
from tests.integration.conftest import wait_for
from tests.integration.own_stack import own_stack
from tests.integration.test_readme import EXAMPLES

QUEUE = "turnstream:queue"
RETRY_SETTINGS = {
    "TURNSTREAM_UPSTREAM_RETRY_BUDGET_S": "60",
    "TURNSTREAM_UPSTREAM_RETRY_BASE_S": "0.05",
    "TURNSTREAM_UPSTREAM_RETRY_MAX_S": "0.2",
    # Retry-After: 1 is waited in the worker; 3 s or more goes back to the queue.
    "TURNSTREAM_UPSTREAM_RETRY_INLINE_MAX_S": "2",
    "TURNSTREAM_FIRST_TOKEN_TIMEOUT_S": "1",
    "TURNSTREAM_MAX_JOBS": "2",
    "TURNSTREAM_POLL_DELAY_S": "0.2",
}


@pytest.fixture(scope="module")
def retry_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with own_stack(tmp_path_factory.mktemp("upstream-retries"), RETRY_SETTINGS, workers=2) as stack:
        yield stack


@pytest.fixture
def client(retry_stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=retry_stack.base_url, api_key="test-key", timeout=60) as c:
        yield c


def _tag() -> str:
    return f"({uuid.uuid4().hex[:8]})"


def _numbers(n: int) -> str:
    return " ".join(str(i) for i in range(1, n + 1))


def _events(stack: Stack, response_id: str) -> list[tuple[str, dict[str, object]]]:
    entries = redis.Redis(port=stack.redis.port).xrange(keys.events(response_id))
    return [(e.type, e.json()) for _, f in entries for e in decode_entries(f)]


def _logs(stack: Stack) -> str:
    return "".join(p.read_text() for p in stack.logdir.glob("worker-*.log"))


@pytest.mark.parametrize("status", [429, 503], ids=["429", "503"])
def test_six_failures_in_a_row_are_retried_until_the_turn_completes(
    client: OpenAI, retry_stack: Stack, status: int
) -> None:
    tag = _tag()
    response = client.responses.create(model="plain", input=f"count to 20 [fail={status}x6][retry-after=1] {tag}")

    assert response.status == "completed", response.error
    assert response.output_text == _numbers(20)
    # Each wait is announced once, naming what failed and where.
    waits = re.findall(rf"retrying in [\d.]+ s after {status} from turnstream-mock@127\.0\.0\.1", _logs(retry_stack))
    assert len(waits) >= 6


def test_a_stream_cut_after_10_of_200_words_continues_in_the_same_message(client: OpenAI) -> None:
    stream = client.responses.create(model="plain", input=f"count to 200 [cut-after=10] {_tag()}", stream=True)
    _one_message_streamed_whole(client, stream, _numbers(200))


def _one_message_streamed_whole(client: OpenAI, stream: Any, text: str) -> tuple[list[str], str]:
    """Reads the stream to its end and checks the stored answer is `text` in one message, streamed exactly once
    (no word twice, none missing); returns the event types seen and the response id."""
    deltas, item_ids, kinds, final = [], set(), [], None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
            item_ids.add(event.item_id)
        elif event.type == "response.completed":
            final = event.response
    assert final is not None and final.status == "completed"
    stored = client.responses.retrieve(final.id)
    [message] = [item for item in stored.output if item.type == "message"]
    assert stored.output_text == text
    assert "".join(deltas) == stored.output_text
    assert item_ids == {message.id}
    return kinds, final.id


def test_a_cut_stream_continues_in_the_same_message_after_a_wait_on_the_queue(
    client: OpenAI, retry_stack: Stack
) -> None:
    # Cut after 10 words; the continuation is rate-limited for 3 s (past the inline limit), so the turn waits
    # back on the queue and the worker that picks it up next continues the message from the stream.
    stream = client.responses.create(
        model="plain", input=f"count to 60 [cut-after=10][fail=429x1][retry-after=3] {_tag()}", stream=True
    )
    kinds, response_id = _one_message_streamed_whole(client, stream, _numbers(60))
    assert kinds.count("response.in_progress") == 2  # the pickup after the wait announces itself again
    r = redis.Redis(port=retry_stack.redis.port)
    # The pickup after the wait continued the turn: not counted as a try (a worker death).
    assert r.hmget(keys.response(response_id), ["attempt", "waits"]) == [b"2", b"1"]


def test_more_waits_on_the_queue_than_the_job_tries_limit_still_complete_the_turn(
    client: OpenAI, retry_stack: Stack
) -> None:
    # Four waits past the inline limit: five pickups, more than TURNSTREAM_JOB_MAX_TRIES (3) allows re-runs.
    response = client.responses.create(model="plain", input=f"count to 5 [fail=429x4][retry-after=2.1] {_tag()}")

    assert response.status == "completed", response.error
    assert response.output_text == _numbers(5)
    r = redis.Redis(port=retry_stack.redis.port)
    assert r.hmget(keys.response(response.id), ["attempt", "waits"]) == [b"5", b"4"]


def test_a_cut_tool_call_restarts_its_arguments_and_streams_each_fragment_once(
    client: OpenAI, retry_stack: Stack
) -> None:
    text = "a fairly long argument, so that the stream breaks off in the middle of it"
    response = client.responses.create(
        model="turnstream-mock", input=f'call echo_tool({{"text": "{text}"}}) [cut-after=4] {_tag()}'
    )

    assert response.status == "completed", response.error
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.arguments == f'{{"text": "{text}"}}'
    streamed = "".join(
        str(body["delta"])
        for kind, body in _events(retry_stack, response.id)
        if kind == "response.function_call_arguments.delta"
    )
    assert streamed == call.arguments
    [result] = [item for item in response.output if item.type == "function_call_output"]
    assert result.output == text


def test_a_first_request_that_never_answers_is_retried_after_the_first_token_timeout(client: OpenAI) -> None:
    response = client.responses.create(model="plain", input=f"count to 5 [silent] {_tag()}")

    assert response.status == "completed", response.error
    assert response.output_text == _numbers(5)


def test_an_upstream_that_refuses_to_continue_leaves_the_turn_incomplete_with_what_was_streamed(
    client: OpenAI,
) -> None:
    response = client.responses.create(model="plain", input=f"count to 50 [cut-after=5][no-continue] {_tag()}")

    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "upstream_error"
    assert response.output_text.split() == _numbers(5).split()


@pytest.mark.parametrize("status", [400, 401, 403, 404], ids=["400", "401", "403", "404"])
def test_an_answer_a_retry_cannot_change_fails_the_turn_at_once(
    client: OpenAI, retry_stack: Stack, status: int
) -> None:
    tag = _tag()
    response = client.responses.create(model="plain", input=f"hello [fail={status}x1] {tag}")

    assert response.status == "failed"
    assert response.error is not None and f"upstream model error {status}" in response.error.message
    assert response.id not in "".join(line for line in _logs(retry_stack).splitlines() if "retrying in" in line)


@pytest.mark.parametrize(
    ("cue", "code"),
    [("[fail=429x100][retry-after=1]", "rate_limit_exceeded"), ("[fail=503x100]", "server_error")],
    ids=["429", "503"],
)
def test_a_spent_retry_budget_fails_the_turn_with_the_matching_code(client: OpenAI, cue: str, code: str) -> None:
    response = client.responses.create(model="impatient", input=f"hello {cue} {_tag()}")

    assert response.status == "failed"
    assert response.error is not None and response.error.code == code
    # The message names the upstream and what was tried.
    assert "turnstream-mock@127.0.0.1" in response.error.message
    assert re.search(r"tried: \d+x \d{3} from turnstream-mock@", response.error.message)


def test_a_long_wait_frees_the_worker_slot_for_other_turns(client: OpenAI, retry_stack: Stack) -> None:
    # Both workers' two slots each would be taken by turns waiting 30 s, if waits held them.
    waiting = [
        client.responses.create(
            model="turnstream-mock", input=f"hello [fail=429x1][retry-after=30] {_tag()}", background=True
        ).id
        for _ in range(4)
    ]
    r = redis.Redis(port=retry_stack.redis.port)
    wait_until(lambda: all(r.hget(keys.response(i), "deferred") for i in waiting), 20, "turns waiting")

    healthy = client.responses.create(model="plain", input=f"count to 3 {_tag()}")

    assert healthy.status == "completed"
    assert [client.responses.retrieve(i).status for i in waiting] == ["in_progress"] * 4
    # They wait in the queue, due later, not in a worker's running set.
    now_ms = time.time() * 1000
    for response_id in waiting:
        assert r.zscore(keys.running_jobs(QUEUE), response_id) is None
        assert (r.zscore(QUEUE, response_id) or 0) > now_ms

    # A cancel does not wait for the upstream's 30 s: the turn is started at once, and cancelled.
    for response_id in waiting:
        client.responses.cancel(response_id)
    for response_id in waiting:
        assert wait_for(client, response_id, {"cancelled", "completed", "failed"}, timeout=15).status == "cancelled"


@pytest.mark.parametrize("retry_after", [1.5, 3], ids=["wait-in-worker", "wait-on-queue"])
def test_a_worker_killed_during_a_wait_still_ends_the_turn_once(
    client: OpenAI, retry_stack: Stack, retry_after: float
) -> None:
    tag = _tag()
    response_id = client.responses.create(
        model="plain", input=f"count to 10 [fail=429x1][retry-after={retry_after}] {tag}", background=True
    ).id
    # The worker that logged the wait for this turn is the one to kill.
    logs = {name: retry_stack.logdir / f"{name}.log" for name in retry_stack.worker_pids()}
    wait_until(lambda: any(response_id in p.read_text() and "retrying in" in p.read_text() for p in logs.values()),
               20, "the retry wait")
    [victim] = [n for n, p in logs.items() if response_id in p.read_text()]
    retry_stack.stop(victim, kill=True)
    retry_stack.spawn(victim, "worker")

    done = wait_for(client, response_id, {"completed", "failed", "incomplete"}, timeout=30)

    assert done.status == "completed", done.error
    assert done.output_text == _numbers(10)
    terminal = [kind for kind, _ in _events(retry_stack, response_id) if kind.startswith("response.completed")]
    assert terminal == ["response.completed"]


# --- fallback upstreams -----------------------------------------------------------------------------------


COOLDOWN_S = 15


@pytest.fixture(scope="module")
def fallback_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with no worker yet: the tests start workers whose own upstream refuses connections."""
    env = {
        **RETRY_SETTINGS,
        "TURNSTREAM_UPSTREAM_COOLDOWN_FAILURES": "2",
        "TURNSTREAM_UPSTREAM_COOLDOWN_S": str(COOLDOWN_S),
    }
    with own_stack(tmp_path_factory.mktemp("upstream-fallbacks"), env, workers=0) as stack:
        yield stack


def _refusing_worker(stack: Stack, name: str, closed_port: int) -> int:
    """Starts a worker whose upstream is a port nothing listens on; returns its metrics port."""
    metrics_port = free_port()
    stack.spawn(
        name,
        "worker",
        env={
            "OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port}/v1",
            "TURNSTREAM_TEST_FALLBACK_URL": stack.mock_url,
            "TURNSTREAM_WORKER_METRICS_PORT": str(metrics_port),
        },
    )
    wait_until(lambda: _scrape(metrics_port) is not None, 30, f"{name} metrics")
    stack.wait_live_worker()
    return metrics_port


def _scrape(port: int) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics").text
    except httpx.HTTPError:
        return None


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def test_a_refused_primary_falls_back_and_its_cooldown_spares_every_worker(fallback_stack: Stack) -> None:
    closed = free_port()
    primary = f"turnstream-mock@127.0.0.1:{closed}"
    r = redis.Redis(port=fallback_stack.redis.port)
    first_metrics = _refusing_worker(fallback_stack, "worker-1", closed)
    with OpenAI(base_url=fallback_stack.base_url, api_key="test-key", timeout=60) as client:
        first = client.responses.create(model="with-fallback", input=f"count to 5 {_tag()}")

        assert first.status == "completed", first.error
        assert first.output_text == _numbers(5)
        assert first.model == "with-fallback"
        assert first.metadata == {"turnstream_upstream": "spare"}
        assert r.pttl(keys.upstream_cooldown(primary)) > 0
        scraped = _scrape(first_metrics) or ""
        assert _metric(scraped, "turnstream_upstream_cooldowns_total", upstream=primary) == 1
        assert _metric(scraped, "turnstream_upstream_fallbacks_total", upstream="spare") == 1
        assert _metric(scraped, "turnstream_upstream_turns_served_total", upstream="spare") == 1
        log = (fallback_stack.logdir / "worker-1.log").read_text()
        assert f"upstream http://127.0.0.1:{closed}/v1 refuses connections" in log  # warned at start
        assert f"connection refused to http://127.0.0.1:{closed}/v1" in log

        # Another worker, which has never called the primary, starts on the fallback at once.
        fallback_stack.stop("worker-1")
        second_metrics = _refusing_worker(fallback_stack, "worker-2", closed)
        second = client.responses.create(model="with-fallback", input=f"count to 7 {_tag()}")

        assert second.status == "completed", second.error
        assert second.metadata == {"turnstream_upstream": "spare"}
        assert not r.exists(keys.upstream_failures(primary))  # the primary was not called again
        scraped = _scrape(second_metrics) or ""
        assert _metric(scraped, "turnstream_upstream_retries_total") == 0
        assert _metric(scraped, "turnstream_upstream_turns_served_total", upstream="spare") == 1

        # The cooldown ends on its own: the next turn calls the primary again (and falls back once more).
        wait_until(lambda: not r.exists(keys.upstream_cooldown(primary)), COOLDOWN_S + 5, "the cooldown to end")
        third = client.responses.create(model="with-fallback", input=f"count to 2 {_tag()}")

        assert third.status == "completed", third.error
        scraped = _scrape(second_metrics) or ""
        assert _metric(scraped, "turnstream_upstream_retries_total", upstream=primary) >= 1
        assert r.pttl(keys.upstream_cooldown(primary)) > 0




def test_the_readme_example_of_upstream_faults_runs(retry_stack: Stack) -> None:
    code = EXAMPLES["upstream-faults"].replace("http://127.0.0.1:8000/v1", retry_stack.base_url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README example upstream-faults", "exec"), {"__name__": "__readme__"})
    assert out.getvalue().strip() == f"completed {_numbers(12)}"
