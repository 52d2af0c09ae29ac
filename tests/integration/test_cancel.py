"""Cancel: before pickup, during a run (the upstream stream closes), idempotent, with what the turn keeps."""

from __future__ import annotations

import time

import pytest
from openai import OpenAI

from tests.conftest import Stack
from tests.integration.conftest import TERMINAL, assert_consecutive, validated, wait_for


def _text_deltas(client: OpenAI, response_id: str) -> int:
    return sum(1 for e in client.responses.retrieve(response_id, stream=True) if e.type == "response.output_text.delta")


def test_cancel_during_a_run_stops_within_a_second(client: OpenAI) -> None:
    created = client.responses.create(model="turnstream-mock", input="count to 2000 [delay=20ms]", background=True)
    stream = client.responses.retrieve(created.id, stream=True)
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    started = time.monotonic()
    cancelled = client.responses.cancel(created.id)
    elapsed = time.monotonic() - started
    assert cancelled.status == "cancelled"
    assert elapsed < 1.0
    rest = validated(stream)
    assert rest[-1].type == "response.incomplete" and rest[-1].response.status == "cancelled"
    # The upstream stream was closed: no further tokens arrive after the terminal state.
    deltas = _text_deltas(client, created.id)
    time.sleep(0.3)
    assert _text_deltas(client, created.id) == deltas
    assert deltas < 100  # 2000 tokens at 20 ms would take 40 s


def test_cancel_is_idempotent_and_returns_the_final_response(client: OpenAI) -> None:
    created = client.responses.create(model="turnstream-mock", input="count to 1000 [delay=20ms]", background=True)
    wait_for(client, created.id, {"in_progress"})
    first = client.responses.cancel(created.id)
    second = client.responses.cancel(created.id)
    assert first.status == second.status == "cancelled"
    assert first.id == second.id == created.id


def test_cancel_before_pickup_is_honoured(client: OpenAI, stack: Stack) -> None:
    # With every worker stopped, the turn stays queued until cancelled.
    workers = stack.worker_pids()
    for name in workers:
        stack.stop(name)
    try:
        created = client.responses.create(model="turnstream-mock", input="never run", background=True)
        time.sleep(0.2)
        assert client.responses.retrieve(created.id).status == "queued"
        cancelled = client.responses.cancel(created.id)
        assert cancelled.status == "cancelled"
        events = validated(client.responses.retrieve(created.id, stream=True))
        assert [e.type for e in events] == ["response.created", "response.queued", "response.incomplete"]
        assert_consecutive([e.sequence_number for e in events])
    finally:
        for name in workers:
            stack.spawn(name, "worker")
    # A worker picking the job up later finds it finished and leaves it alone.
    time.sleep(1.5)
    assert client.responses.retrieve(created.id).status == "cancelled"
    assert len(validated(client.responses.retrieve(created.id, stream=True))) == 3


def test_cancelled_turn_keeps_input_and_partial_text_in_the_conversation(client: OpenAI) -> None:
    conv = client.conversations.create()
    created = client.responses.create(
        model="turnstream-mock", input="count to 2000 [delay=10ms]", conversation=conv.id, background=True
    )
    for event in client.responses.retrieve(created.id, stream=True):
        if event.type == "response.output_text.delta":
            break
    time.sleep(0.2)
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    items = client.conversations.items.list(conv.id, order="asc").data
    assert [i.role for i in items] == ["user", "assistant"]  # type: ignore[union-attr]
    assert items[1].status == "incomplete"  # type: ignore[union-attr]
    partial = items[1].content[0].text  # type: ignore[union-attr]
    assert partial.startswith("1 2 3") and not partial.endswith("2000")
    assert cancelled.output[0].content[0].text == partial  # type: ignore[union-attr]


def test_cancel_unknown_response_is_404(client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_doesnotexist")


def test_cancelled_terminal_is_reported_once(client: OpenAI) -> None:
    created = client.responses.create(model="turnstream-mock", input="count to 500 [delay=20ms]", background=True)
    wait_for(client, created.id, {"in_progress"})
    client.responses.cancel(created.id)
    final = wait_for(client, created.id, TERMINAL)
    events = validated(client.responses.retrieve(created.id, stream=True))
    assert sum(1 for e in events if e.type in ("response.completed", "response.incomplete", "response.failed")) == 1
    assert final.status == "cancelled"
