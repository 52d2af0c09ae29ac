"""`store: false`: the creating request gets the whole turn; afterwards nothing of it can be fetched or built on
over HTTP (a WebSocket continues one from its own memory: test_websocket_continuation.py)."""

from __future__ import annotations

import httpx
import openai
import pytest
import redis
from openai import OpenAI

from shared import keys
from tests.conftest import Stack
from tests.integration.conftest import validated

M = "turnstream-mock"
UNSTORED_TTL_S = 300  # TURNSTREAM_UNSTORED_RESPONSE_TTL_S default


def test_an_unstored_response_is_returned_in_full_to_its_request(client: OpenAI) -> None:
    response = client.responses.create(model=M, input="count to 5", store=False)

    assert response.status == "completed"
    assert response.store is False
    assert response.output_text == "1 2 3 4 5"


def test_an_unstored_response_streams_while_it_runs(client: OpenAI) -> None:
    events = validated(client.responses.create(model=M, input="count to 20", store=False, stream=True))

    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert events[-1].response.store is False
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == " ".join(
        str(i) for i in range(1, 21)
    )


def test_an_unstored_response_cannot_be_fetched_resumed_cancelled_or_deleted(stack: Stack, client: OpenAI) -> None:
    unstored = client.responses.create(model=M, input="hi", store=False)
    base = f"{stack.base_url}/responses/{unstored.id}"

    for r in (
        httpx.get(base),
        httpx.get(base, params={"stream": "true"}),
        httpx.get(base, params={"stream": "true", "starting_after": "0"}),
        httpx.get(f"{base}/input_items"),
        httpx.post(f"{base}/cancel"),
        httpx.delete(base),
    ):
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_an_unstored_response_cannot_be_a_previous_response(client: OpenAI) -> None:
    unstored = client.responses.create(model=M, input="My name is Ravi.", store=False)

    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=M, input="What is my name?", previous_response_id=unstored.id)

    assert (raised.value.param, raised.value.code) == ("previous_response_id", "previous_response_not_found")


def test_an_unstored_response_keeps_its_working_state_only_briefly(client: OpenAI, rds: redis.Redis) -> None:
    stored = client.responses.create(model=M, input="hi")
    unstored = client.responses.create(model=M, input="hi", store=False)

    assert 0 < rds.ttl(keys.response(unstored.id)) <= UNSTORED_TTL_S
    assert 0 < rds.ttl(keys.events(unstored.id)) <= UNSTORED_TTL_S
    assert rds.ttl(keys.response(stored.id)) > UNSTORED_TTL_S
    assert rds.ttl(keys.events(stored.id)) > UNSTORED_TTL_S


def test_an_unstored_background_response_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=M, input="hi", store=False, background=True)

    assert raised.value.param == "background"


def test_an_unstored_turn_reads_its_conversation_and_adds_nothing_to_it(client: OpenAI) -> None:
    conversation = client.conversations.create()
    client.responses.create(model=M, input="My name is Ravi.", conversation=conversation.id)
    before = [item.id for item in client.conversations.items.list(conversation.id, order="asc").data]

    aside = client.responses.create(model=M, input="What is my name?", conversation=conversation.id, store=False)

    assert aside.output_text == "Your name is Ravi."
    assert [item.id for item in client.conversations.items.list(conversation.id, order="asc").data] == before
    after = client.responses.create(model=M, input="What is my name?", conversation=conversation.id)
    assert after.output_text == "Your name is Ravi."
    assert len(client.conversations.items.list(conversation.id).data) == len(before) + 2
