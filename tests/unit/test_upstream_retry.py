"""Which upstream failures a turn retries, how long it waits, and how it moves between upstreams.

Errors are the SDK's own, raised by real requests (to a closed port) or built from real HTTP responses.
"""

from __future__ import annotations

import email.utils
import time

import httpx
import openai
import pytest
from arq.connections import ArqRedis
from openai import AsyncOpenAI

from shared import keys
from shared.settings import Settings
from tests.conftest import free_port
from worker.chat_stream import StreamCut
from worker.upstream_diagnostics import describe_upstream_error
from worker.upstream_retry import (
    Exhausted,
    TurnRetries,
    backoff_s,
    classify,
    retry_after,
)
from worker.upstreams import Upstream, UpstreamPool, make_client

REQUEST = httpx.Request("POST", "http://upstream.test/v1/chat/completions")


def _status_error(status: int, body: dict[str, object] | None = None, **headers: str) -> openai.APIStatusError:
    response = httpx.Response(status, headers=headers, json=body or {}, request=REQUEST)
    client = openai.OpenAI(base_url="http://upstream.test/v1", api_key="k")
    error: openai.APIStatusError = client._make_status_error_from_response(response)
    return error


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 529])
def test_rate_limits_overload_and_server_errors_are_retried(status: int) -> None:
    failure = classify(_status_error(status), 60)
    assert failure is not None and failure.reason == str(status) and failure.status == status


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    assert classify(_status_error(status), 60) is None


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, "insufficient_quota"), (400, "context_length_exceeded"), (400, "content_filter")],
    ids=["out-of-quota", "context-length", "content-policy"],
)
def test_failures_that_a_retry_cannot_fix_are_not_retried(status: int, code: str) -> None:
    assert classify(_status_error(status, {"error": {"code": code, "message": "no"}}), 60) is None


def test_cut_streams_and_first_token_timeouts_are_retried() -> None:
    cut = classify(StreamCut(message="the upstream stream broke off (ReadError)", request=REQUEST), 60)
    silent = classify(TimeoutError(), 7)
    assert cut is not None and cut.reason == "cut"
    assert silent is not None and silent.reason == "first_token_timeout" and "7s" in silent.detail


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_refused_connection_is_reported_as_refused_not_as_a_timeout(transport: str) -> None:
    port = free_port()  # nothing listens there
    settings = Settings(_env_file=None, upstream_http_client=transport)  # type: ignore[call-arg]
    client: AsyncOpenAI = make_client(settings, f"http://127.0.0.1:{port}/v1", "k")
    try:
        with pytest.raises(openai.APIConnectionError) as caught:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert describe_upstream_error(caught.value) == f"connection refused to http://127.0.0.1:{port}/v1"
    failure = classify(caught.value, 60)
    assert failure is not None and failure.reason == "connection_refused"


def test_retry_after_headers_are_read_in_milliseconds_seconds_or_as_a_date() -> None:
    assert retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= (retry_after(httpx.Headers({"retry-after": in_ten})) or 0) <= 10
    assert retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert retry_after(httpx.Headers({})) is None
    failure = classify(_status_error(429, **{"retry-after": "2"}), 60)
    assert failure is not None and failure.retry_after_s == 2.0


def test_backoff_honours_retry_after_and_otherwise_grows_to_its_cap() -> None:
    settings = Settings(_env_file=None, upstream_retry_base_s=0.5, upstream_retry_max_s=4)  # type: ignore[call-arg]
    assert 2.0 <= backoff_s(1, settings, 2.0) <= 2.2
    for failures, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        waits = [backoff_s(failures, settings, None) for _ in range(50)]
        assert all(cap / 2 <= w <= cap for w in waits)


# --- across upstreams, with the fleet's state in Redis ---------------------------------------------------


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "openai_base_url": "http://primary.test/v1",
        "upstream_retry_base_s": 0.01,
        "upstream_retry_max_s": 0.02,
        "upstream_cooldown_failures": 2,
        "upstream_attempts_before_fallback": 3,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


FALLBACK = Upstream("http://spare.test/v1", "spare-model", name="spare")


async def _retries(redis: ArqRedis, settings: Settings, response_id: str = "resp_1") -> TurnRetries:
    pool = UpstreamPool(redis, settings, make_client(settings, settings.upstream_base_url, "k"))
    return TurnRetries(redis, pool, settings, pool.routes("main-model", (FALLBACK,)), response_id)


async def test_an_upstream_failing_in_a_row_cools_down_and_new_turns_start_on_the_fallback(
    script_redis: ArqRedis,
) -> None:
    settings = _settings()
    first = await _retries(script_redis, settings)
    await first.start(resumed=False)
    assert first.route.name == "main-model@primary.test"
    failure = classify(_status_error(503), 60)
    assert failure is not None

    assert await first.failed(failure) > 0  # waits, then calls the primary again
    assert first.route.name == "main-model@primary.test"
    assert await first.failed(failure) == 0  # the second failure in a row: cooldown, and on to the fallback
    assert first.route.name == "spare" and first.route.model == "spare-model"
    assert await script_redis.pttl(keys.upstream_cooldown("main-model@primary.test")) > 0

    second = await _retries(script_redis, settings, "resp_2")
    await second.start(resumed=False)
    assert second.route.name == "spare"


async def test_a_spent_budget_gives_the_upstreams_error_code_and_names_what_was_tried(
    script_redis: ArqRedis,
) -> None:
    retries = await _retries(script_redis, _settings(upstream_retry_budget_s=5))
    await retries.start(resumed=False)
    rate_limited = classify(_status_error(429, **{"retry-after": "10"}), 60)
    assert rate_limited is not None

    with pytest.raises(Exhausted) as caught:
        await retries.failed(rate_limited)

    assert caught.value.code == "rate_limit_exceeded"
    assert "tried: 1x 429 from main-model@primary.test" in caught.value.message


async def test_a_rerun_picks_up_the_turns_retry_state(script_redis: ArqRedis) -> None:
    settings = _settings(upstream_attempts_before_fallback=1, upstream_cooldown_failures=10)
    first = await _retries(script_redis, settings)
    await first.start(resumed=False)
    failure = classify(_status_error(500), 60)
    assert failure is not None
    await first.failed(failure)
    assert first.route.name == "spare"

    rerun = await _retries(script_redis, settings)
    await rerun.start(resumed=True)

    assert rerun.route.name == "spare"
    assert rerun.retrying
    assert rerun.state.tried == {"500 from main-model@primary.test": 1}
