"""Multi-turn: conversations, previous_response_id, isolation, and one writer per conversation."""

from __future__ import annotations

import threading

import openai
import pytest
from openai import OpenAI
from openai.types.conversations import Conversation, ConversationItemList

from tests.integration.conftest import TERMINAL, wait_for


def test_conversation_carries_context_across_turns(client: OpenAI) -> None:
    conv = client.conversations.create(metadata={"user": "ravi"})
    Conversation.model_validate(conv.to_dict())
    first = client.responses.create(model="turnstream-mock", input="My name is Ravi.", conversation=conv.id)
    assert first.conversation is not None and first.conversation.id == conv.id
    second = client.responses.create(model="turnstream-mock", input="What is my name?", conversation=conv.id)
    assert second.output_text == "Your name is Ravi."
    items = client.conversations.items.list(conv.id, order="asc")
    ConversationItemList.model_validate(items.to_dict())
    assert [i.role for i in items.data] == ["user", "assistant", "user", "assistant"]  # type: ignore[union-attr]


def test_streamed_turn_is_persisted_even_when_the_client_only_iterated_the_stream(client: OpenAI) -> None:
    conv = client.conversations.create()
    for _ in client.responses.create(
        model="turnstream-mock", input="My name is Mei.", conversation=conv.id, stream=True
    ):
        pass
    answer = client.responses.create(model="turnstream-mock", input="What is my name?", conversation=conv.id)
    assert answer.output_text == "Your name is Mei."


def test_previous_response_id_chains_context(client: OpenAI) -> None:
    first = client.responses.create(model="turnstream-mock", input="My name is Ravi.")
    second = client.responses.create(model="turnstream-mock", input="Hello there", previous_response_id=first.id)
    third = client.responses.create(
        model="turnstream-mock", input="What is my name?", previous_response_id=second.id
    )
    assert third.previous_response_id == second.id
    assert third.output_text == "Your name is Ravi."


def test_fresh_conversation_does_not_know_the_name(client: OpenAI) -> None:
    a = client.conversations.create()
    b = client.conversations.create()
    client.responses.create(model="turnstream-mock", input="My name is Ravi.", conversation=a.id)
    other = client.responses.create(model="turnstream-mock", input="What is my name?", conversation=b.id)
    assert other.output_text == "I don't know your name yet."
    alone = client.responses.create(model="turnstream-mock", input="What is my name?")
    assert alone.output_text == "I don't know your name yet."


def test_conversation_items_paginate(client: OpenAI) -> None:
    conv = client.conversations.create(items=[{"role": "user", "content": f"note {i}"} for i in range(5)])
    page = client.conversations.items.list(conv.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["note 0", "note 1"]  # type: ignore[union-attr]
    assert page.has_more
    everything = [i.content[0].text for i in client.conversations.items.list(conv.id, limit=2, order="asc")]  # type: ignore[union-attr]
    assert everything == [f"note {i}" for i in range(5)]


def test_conversation_get_update_and_delete(client: OpenAI) -> None:
    conv = client.conversations.create(metadata={"a": "1"})
    assert client.conversations.retrieve(conv.id).metadata == {"a": "1"}
    updated = client.conversations.update(conv.id, metadata={"a": "2"})
    assert updated.metadata == {"a": "2"}
    deleted = client.conversations.delete(conv.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)


def test_two_concurrent_turns_wait_and_the_second_sees_the_first(client: OpenAI) -> None:
    conv = client.conversations.create()
    first = client.responses.create(
        model="turnstream-mock", input="My name is Ravi. [delay=30ms]", conversation=conv.id, background=True
    )
    second = client.responses.create(
        model="turnstream-mock", input="What is my name?", conversation=conv.id, background=True
    )
    done_second = wait_for(client, second.id, TERMINAL)
    done_first = wait_for(client, first.id, TERMINAL)
    assert done_first.status == done_second.status == "completed"
    assert done_second.output_text == "Your name is Ravi."
    items = client.conversations.items.list(conv.id, order="asc").data
    texts = [i.content[0].text for i in items]  # type: ignore[union-attr]
    assert texts == [
        "My name is Ravi. [delay=30ms]",
        "Nice to meet you, Ravi.",
        "What is my name?",
        "Your name is Ravi.",
    ]


def test_many_concurrent_turns_on_one_conversation_never_interleave(client: OpenAI) -> None:
    conv = client.conversations.create()
    ids: list[str] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        r = client.responses.create(
            model="turnstream-mock", input=f"turn {i} [delay=2ms]", conversation=conv.id, background=True
        )
        with lock:
            ids.append(r.id)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rid in ids:
        assert wait_for(client, rid, TERMINAL, timeout=60).status == "completed"
    items = list(client.conversations.items.list(conv.id, order="asc", limit=100))
    assert len(items) == 16
    for user, assistant in zip(items[::2], items[1::2], strict=True):
        said = user.content[0].text.replace(" [delay=2ms]", "")  # type: ignore[union-attr]
        assert assistant.content[0].text == f"You said: {said}"  # type: ignore[union-attr]


def test_reject_policy_answers_409_while_a_turn_runs(client: OpenAI) -> None:
    conv = client.conversations.create()
    running = client.responses.create(
        model="turnstream-mock", input="count to 300 [delay=10ms]", conversation=conv.id, background=True
    )
    with pytest.raises(openai.ConflictError) as info:
        client.responses.create(
            model="turnstream-mock",
            input="hello?",
            conversation=conv.id,
            extra_body={"conversation_lock": "reject"},
        )
    assert info.value.code == "conversation_locked"
    wait_for(client, running.id, TERMINAL)
    after = client.responses.create(
        model="turnstream-mock", input="hello?", conversation=conv.id, extra_body={"conversation_lock": "reject"}
    )
    assert after.status == "completed"
