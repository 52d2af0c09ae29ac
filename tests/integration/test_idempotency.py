"""Idempotency-Key: a retried create answers with the first one's object and never runs a second turn."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from shared import events, keys
from tests.conftest import Stack
from tests.integration.conftest import TERMINAL, validated, wait_for
from tests.integration.keyed_stack import KeyedStack, M, http

SLOW = "count to 60 [delay=25ms]"  # 1.5 s


@pytest.fixture
def secret(keyed: KeyedStack) -> str:
    return keyed.key(f"idem-{uuid.uuid4().hex[:8]}")[1]


@pytest.fixture
def client(keyed: KeyedStack, secret: str) -> Iterator[OpenAI]:
    with keyed.client(secret) as c:
        yield c


def _key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def _responses_stored(keyed: KeyedStack) -> int:
    with keyed.redis() as r:
        return sum(1 for _ in r.scan_iter(match=keys.response("*"), count=1000))


def test_a_retried_background_create_returns_the_same_response_and_runs_one_turn(
    keyed: KeyedStack, client: OpenAI
) -> None:
    before = _responses_stored(keyed)
    headers = _key()
    first = client.responses.create(model=M, input=SLOW, background=True, extra_headers=headers)
    again = client.responses.create(model=M, input=SLOW, background=True, extra_headers=headers)
    assert again.id == first.id
    final = wait_for(client, first.id, TERMINAL)
    later = client.responses.create(model=M, input=SLOW, background=True, extra_headers=headers)
    assert (later.id, later.status, later.output_text) == (first.id, "completed", final.output_text)
    assert _responses_stored(keyed) == before + 1
    created = [e for e in validated(client.responses.retrieve(first.id, stream=True)) if e.type == events.CREATED]
    assert len(created) == 1


def test_a_create_whose_answer_was_lost_is_answered_on_retry_without_a_second_turn(
    keyed: KeyedStack, secret: str, client: OpenAI
) -> None:
    before = _responses_stored(keyed)
    headers = _key()
    body = {"model": M, "input": SLOW}
    with http(keyed.api_urls[0], secret) as raw, pytest.raises(httpx.ReadTimeout):
        raw.post("/v1/responses", json=body, headers=headers, timeout=0.3)  # the client gives up; the turn runs on
    retried = client.responses.create(model=M, input=SLOW, extra_headers=headers)  # waits, like the first
    assert retried.status == "completed"
    assert retried.output_text == " ".join(str(i) for i in range(1, 61))
    assert _responses_stored(keyed) == before + 1


def test_a_retried_stream_replays_the_first_stream_from_its_start(keyed: KeyedStack, secret: str) -> None:
    before = _responses_stored(keyed)
    headers = _key()
    body = {"model": M, "input": SLOW, "stream": True}
    with http(keyed.api_urls[0], secret) as raw, raw.stream("POST", "/v1/responses", json=body, headers=headers) as r:
        first_line = next(r.iter_lines())  # then the connection drops
    assert first_line == "id: 0"
    with keyed.client(secret, node=1) as other_node:
        replayed = validated(
            other_node.responses.create(model=M, input=SLOW, stream=True, extra_headers=headers)
        )
    assert [e.sequence_number for e in replayed] == list(range(len(replayed)))
    assert replayed[0].type == events.CREATED and replayed[-1].type == "response.completed"
    assert _responses_stored(keyed) == before + 1


def test_the_same_key_with_another_body_is_refused_with_422(client: OpenAI) -> None:
    headers = _key()
    client.responses.create(model=M, input="hi", background=True, extra_headers=headers)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.responses.create(model=M, input="hello", background=True, extra_headers=headers)
    assert caught.value.code == "idempotency_key_reused"
    assert caught.value.param == "Idempotency-Key"  # type: ignore[attr-defined]


def test_simultaneous_retries_create_one_response(keyed: KeyedStack, secret: str) -> None:
    before = _responses_stored(keyed)
    headers = _key()
    ids: list[str] = []

    def send(node: int) -> None:
        with keyed.client(secret, node=node) as c:
            ids.append(c.responses.create(model=M, input="hi", background=True, extra_headers=headers).id)

    threads = [threading.Thread(target=send, args=(i % 2,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(ids) == 6 and len(set(ids)) == 1
    assert _responses_stored(keyed) == before + 1


def test_a_create_that_failed_frees_its_key_for_a_corrected_retry(client: OpenAI) -> None:
    headers = _key()
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=M, input="hi", previous_response_id="resp_" + "0" * 48, extra_headers=headers)
    # The failed attempt stored nothing: the key is free, even for another body.
    assert client.responses.create(model=M, input="hi", extra_headers=headers).status == "completed"


def test_keys_are_scoped_to_the_project(keyed: KeyedStack, client: OpenAI) -> None:
    headers = _key()
    mine = client.responses.create(model=M, input="hi", background=True, extra_headers=headers)
    with keyed.client(keyed.key("idem-other-project")[1]) as other:
        theirs = other.responses.create(model=M, input="hi", background=True, extra_headers=headers)
        assert theirs.id != mine.id
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(mine.id)


def test_a_retried_conversation_create_returns_the_same_conversation(client: OpenAI) -> None:
    headers = _key()
    first = client.conversations.create(metadata={"topic": "a"}, extra_headers=headers)
    again = client.conversations.create(metadata={"topic": "a"}, extra_headers=headers)
    assert again.id == first.id
    with pytest.raises(openai.UnprocessableEntityError):
        client.conversations.create(metadata={"topic": "b"}, extra_headers=headers)


def test_an_overlong_key_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=M, input="hi", extra_headers={"Idempotency-Key": "k" * 256})
    assert caught.value.param == "Idempotency-Key"  # type: ignore[attr-defined]


def test_the_open_stack_honours_idempotency_keys_too(stack: Stack) -> None:
    with OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0) as open_client:
        headers = _key()
        first = open_client.responses.create(model=M, input="hi", background=True, extra_headers=headers)
        again = open_client.responses.create(model=M, input="hi", background=True, extra_headers=headers)
    assert again.id == first.id


def test_a_replay_takes_no_second_concurrency_slot(keyed: KeyedStack) -> None:
    _, secret = keyed.key("idem-one-slot", max_concurrent=1)
    headers = _key()
    with keyed.client(secret) as c:
        first = c.responses.create(model=M, input=SLOW, background=True, extra_headers=headers)
        assert c.responses.create(model=M, input=SLOW, background=True, extra_headers=headers).id == first.id
        with pytest.raises(openai.RateLimitError):
            c.responses.create(model=M, input=SLOW, background=True)
        c.responses.cancel(first.id)
