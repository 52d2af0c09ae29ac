"""Webhooks on fakeredis: signatures, the outbox written by the commit, and the delivery loop's retries."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest
from arq.connections import ArqRedis
from standardwebhooks.webhooks import Webhook

from shared import events, ids, keys, webhooks
from shared.models import Status, TurnRequest
from shared.redis_conn import EmbeddedRedis
from shared.response_object import build_response
from shared.settings import Settings
from shared.turn_state import Retention, TurnState
from worker.redis_retry import Outage
from worker.webhook_delivery import WebhookDelivery

SETTINGS = Settings(_env_file=None, webhook_retry_delays_s=[0, 0], webhook_timeout_s=1)  # type: ignore[call-arg]
RETENTION = Retention(stream_ttl_s=600, response_ttl_s=7200, conversation_ttl_s=3600, stream_maxlen=20_000)


@pytest.fixture
def redis() -> ArqRedis:
    return EmbeddedRedis().client(SETTINGS)


def test_signature_matches_the_specs_example() -> None:
    # The example of the Standard Webhooks reference implementations.
    headers = webhooks.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}'
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_new_secrets_are_distinct_and_usable_for_verification() -> None:
    first, second = webhooks.new_secret(), webhooks.new_secret()
    assert first != second and first.startswith("whsec_")
    now = int(datetime.now(UTC).timestamp())
    headers = webhooks.sign(first, "evt_1", now, '{"a": 1}')
    assert Webhook(first).verify('{"a": 1}', headers) == {"a": 1}
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(second).verify('{"a": 1}', headers)


def test_default_retries_last_over_a_day() -> None:
    assert sum(Settings(_env_file=None).webhook_retry_delays_s) >= 24 * 3600  # type: ignore[call-arg]


def _call(call_id: str) -> dict[str, str]:
    return {"type": "function_call", "call_id": call_id, "name": "f", "arguments": "{}"}


def test_a_response_waiting_on_client_calls_also_requires_action() -> None:
    waiting = {"output": [_call("c1")]}
    answered = {"output": [_call("c1"), {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}
    assert webhooks.event_types("completed", waiting) == ["response.completed", "response.requires_action"]
    assert webhooks.event_types("completed", answered) == ["response.completed"]
    assert webhooks.event_types("cancelled", waiting) == ["response.cancelled"]
    assert webhooks.event_types("failed", {"output": []}) == ["response.failed"]


def test_a_response_ending_with_a_tool_call_to_approve_requires_action() -> None:
    request = {"id": "mcpr_1", "type": "mcp_approval_request", "server_label": "a", "name": "f", "arguments": "{}"}
    assert webhooks.event_types("completed", {"output": [request]}) == [
        "response.completed", "response.requires_action"
    ]


async def test_endpoint_registration_checks_url_events_and_the_limit(redis: ArqRedis) -> None:
    with pytest.raises(webhooks.WebhookError, match="absolute http"):
        await webhooks.add_endpoint(redis, "p", "ftp://x/hook", ["response.completed"], 2)
    with pytest.raises(webhooks.WebhookError, match="unknown event"):
        await webhooks.add_endpoint(redis, "p", "http://x/hook", ["response.done"], 2)
    first = await webhooks.add_endpoint(redis, "p", "http://x/1", ["response.failed", "response.completed"], 2)
    await webhooks.add_endpoint(redis, "p", "http://x/2", list(webhooks.EVENT_TYPES), 2)
    with pytest.raises(webhooks.WebhookError, match="already has 2 endpoints"):
        await webhooks.add_endpoint(redis, "p", "http://x/3", ["response.failed"], 2)
    assert first.events == ["response.completed", "response.failed"]
    assert {e.url for e in await webhooks.list_endpoints(redis, "p")} == {"http://x/1", "http://x/2"}
    assert await webhooks.remove_endpoint(redis, "p", first.id)
    assert not await webhooks.remove_endpoint(redis, "p", first.id)
    assert await webhooks.list_endpoints(redis, "other") == []


async def _finished_turn(redis: ArqRedis, final: Status = Status.COMPLETED) -> tuple[TurnRequest, bool, bool]:
    """Runs a turn to its commit twice (the second is refused); returns the request and both results."""
    state = TurnState(redis, RETENTION)
    req = TurnRequest(response_id=ids.response_id(), model="m", input=[])
    await redis.hset(keys.response(req.response_id), mapping={"status": "queued", "attempt": 0, "seq": -1})
    await state.start(req.response_id, req.conversation_id)
    await state.append(req.response_id, 1, [events.text_delta("msg_1", 0, "hi")])

    async def commit() -> bool:
        return await state.finish(
            req.response_id, expect=Status.IN_PROGRESS, attempt=1, final=final,
            response=build_response(req, final), conversation_id=None, items=[],
        )

    return req, await commit(), await commit()


async def test_the_commit_writes_one_outbox_entry_only_when_the_project_has_endpoints(redis: ArqRedis) -> None:
    await _finished_turn(redis)
    assert await redis.llen(keys.webhook_outbox()) == 0

    await webhooks.add_endpoint(redis, "default", "http://x/hook", list(webhooks.EVENT_TYPES), 5)
    req, first, second = await _finished_turn(redis, Status.INCOMPLETE)

    assert (first, second) == (True, False)
    [raw] = await redis.lrange(keys.webhook_outbox(), 0, -1)
    entry = json.loads(raw)
    assert entry["project"] == "default"
    [event] = entry["events"]
    assert event["type"] == "response.incomplete" and event["data"] == {"id": req.response_id}
    assert event["id"].startswith("evt_") and event["object"] == "event"


class Receiver:
    """An httpx transport standing in for endpoints: fails the first `failures` requests, verifies the rest."""

    def __init__(self, secret: str, failures: int = 0) -> None:
        self.webhook = Webhook(secret)
        self.failures = failures
        self.requests: list[httpx.Request] = []
        self.accepted: list[dict[str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) <= self.failures:
            return httpx.Response(503)
        self.accepted.append(self.webhook.verify(request.content, dict(request.headers)))
        return httpx.Response(204)


async def _deliver_until_quiet(loop: WebhookDelivery, rounds: int = 10) -> None:
    for _ in range(rounds):
        await loop.step()
        while loop.inflight:
            await next(iter(loop.inflight))


async def _setup(redis: ArqRedis, failures: int) -> tuple[Receiver, WebhookDelivery, TurnRequest]:
    endpoint = await webhooks.add_endpoint(redis, "default", "http://receiver/hook", ["response.completed"], 5)
    receiver = Receiver(endpoint.secret, failures)
    loop = WebhookDelivery(redis, SETTINGS, Outage(1), http=httpx.AsyncClient(transport=httpx.MockTransport(receiver)))
    req, _, _ = await _finished_turn(redis)
    return receiver, loop, req


async def test_a_failing_receiver_gets_the_same_webhook_id_until_it_accepts(redis: ArqRedis) -> None:
    receiver, loop, req = await _setup(redis, failures=2)

    await _deliver_until_quiet(loop)

    assert len(receiver.requests) == 3
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert [a["data"] for a in receiver.accepted] == [{"id": req.response_id}]
    assert await redis.zcard(keys.webhook_due()) == 0 and await redis.llen(keys.WEBHOOK_DEAD) == 0


async def test_a_delivery_out_of_retries_goes_to_the_dead_letter_list(redis: ArqRedis) -> None:
    receiver, loop, req = await _setup(redis, failures=100)

    await _deliver_until_quiet(loop)

    assert len(receiver.requests) == 1 + len(SETTINGS.webhook_retry_delays_s)
    [dead] = [json.loads(d) for d in await redis.lrange(keys.WEBHOOK_DEAD, 0, -1)]
    assert dead["attempts"] == 3 and dead["last_error"] == "HTTP 503"
    assert json.loads(dead["body"])["data"] == {"id": req.response_id}
    assert await redis.zcard(keys.webhook_due()) == 0


async def test_deliveries_of_a_removed_endpoint_are_dropped(redis: ArqRedis) -> None:
    receiver, loop, _ = await _setup(redis, failures=0)
    [endpoint] = await webhooks.list_endpoints(redis, "default")
    await webhooks.remove_endpoint(redis, "default", endpoint.id)

    await _deliver_until_quiet(loop)

    assert receiver.requests == [] and await redis.zcard(keys.webhook_due()) == 0


async def test_two_workers_expanding_the_same_outbox_create_each_delivery_once(redis: ArqRedis) -> None:
    receiver, loop, _ = await _setup(redis, failures=0)
    other = WebhookDelivery(redis, SETTINGS, Outage(1), http=httpx.AsyncClient(transport=httpx.MockTransport(receiver)))
    await _finished_turn(redis)

    await asyncio.gather(loop.expand(), other.expand())
    await _deliver_until_quiet(loop)
    await _deliver_until_quiet(other)

    assert len(receiver.accepted) == 2  # two turns, one endpoint
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 2
