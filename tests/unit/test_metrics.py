"""Metric definitions: queue figures read from Redis, upstream error labels, and that the shipped Grafana
dashboard and KEDA query name only metrics the service exports."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from shared import keys
from shared.metrics import QUEUE_STATS, QueueStats
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings
from tests.conftest import ROOT
from worker.turn_telemetry import _upstream_error

SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "unknown": ("",)}


async def test_queue_figures_come_from_redis_at_scrape_time() -> None:
    redis = EmbeddedRedis().client(SETTINGS)
    stats = QueueStats()
    now_ms = time.time() * 1000
    await redis.zadd(SETTINGS.queue_name, {"old": now_ms - 5000, "deferred": now_ms + 60_000})
    await redis.zadd(keys.running_jobs(SETTINGS.queue_name), {"running": now_ms + 15_000})
    await redis.zadd(keys.active_turns(), {"a": now_ms, "b": now_ms, "c": now_ms})

    await stats.refresh(redis, SETTINGS.queue_name)

    values = {family.name: family.samples[0].value for family in stats.collect()}
    assert values["turnstream_queue_depth"] == 2
    assert values["turnstream_queue_running"] == 1
    assert values["turnstream_turns_unfinished"] == 3
    assert 4.9 <= values["turnstream_queue_oldest_age_seconds"] < 60
    await redis.delete(SETTINGS.queue_name)
    await stats.refresh(redis, SETTINGS.queue_name)
    assert {f.name: f.samples[0].value for f in stats.collect()}["turnstream_queue_oldest_age_seconds"] == 0


def _request() -> httpx.Request:
    return httpx.Request("POST", "http://upstream/v1/chat/completions")


@pytest.mark.parametrize(
    ("error", "label"),
    [
        (openai.RateLimitError("slow down", response=httpx.Response(429, request=_request()), body=None), "429"),
        (openai.APITimeoutError(request=_request()), "timeout"),
        (TimeoutError(), "timeout"),
        (openai.APIConnectionError(request=_request()), "connection"),
        (openai.APIError("broke off", _request(), body=None), "stream"),
        (RuntimeError("redis away"), None),
    ],
)
def test_upstream_errors_get_a_bounded_label(error: Exception, label: str | None) -> None:
    assert _upstream_error(error) == label


def _exported_names() -> set[str]:
    names = set(QUEUE_STATS._HELP)
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def _referenced(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label names in `by (...)` look alike: dropped first)."""
    return set(re.findall(r"\b(?:turnstream|gen_ai)_[a-z_]+\b", re.sub(r"by \([^)]*\)", "", expr)))


def _family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*map(_referenced, exprs))
    assert len(exprs) >= 20
    assert used - _exported_names() == set()
    # Every metric the service exports is on the dashboard somewhere.
    ours = {_family(n) for n in _exported_names() if n.startswith(("turnstream_", "gen_ai_"))}
    assert ours - {_family(n) for n in used} == set()


def test_the_keda_trigger_queries_exported_metrics() -> None:
    manifest = (ROOT / "deploy" / "k8s" / "31-worker-keda.yaml").read_text()
    [query] = re.findall(r"query: (.+)", manifest)
    assert _referenced(query) == {"turnstream_queue_depth", "turnstream_queue_running"}
    assert _referenced(query) <= _exported_names()
