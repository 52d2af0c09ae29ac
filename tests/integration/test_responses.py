"""The Responses API through the official SDK: background, stream, resume, wait, retrieve."""

from __future__ import annotations

import httpx
from openai import OpenAI
from openai.types.responses import Response

from tests.conftest import Stack
from tests.integration.conftest import TERMINAL, assert_consecutive, validated, wait_for


def test_background_create_returns_queued_then_polls_to_completed(client: OpenAI) -> None:
    created = client.responses.create(model="turnstream-mock", input="My name is Ravi.", background=True)
    assert created.status == "queued"
    assert created.id.startswith("resp_") and len(created.id) > 40
    seen = {created.status}
    final = wait_for(client, created.id, TERMINAL)
    seen.add(final.status)
    assert final.status == "completed"
    assert final.output_text == "Nice to meet you, Ravi."
    assert final.usage is not None and final.usage.output_tokens == 5
    assert final.output[0].id.startswith("msg_")


def test_stream_create_emits_the_openai_event_sequence(client: OpenAI) -> None:
    stream = client.responses.create(model="turnstream-mock", input="count to 30", stream=True)
    events = validated(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert_consecutive([e.sequence_number for e in events])
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == " ".join(str(i) for i in range(1, 31))
    final = events[-1].response
    assert final.status == "completed" and final.output_text == text
    # The stored Response is the same one the terminal event carried.
    stored = client.responses.retrieve(final.id)
    assert Response.model_validate(stored.to_dict()).output_text == text


def test_sdk_stream_helper_accumulates_the_final_response(client: OpenAI) -> None:
    with client.responses.stream(model="turnstream-mock", input="My name is Asha.") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "Nice to meet you, Asha."


def test_plain_create_waits_and_returns_the_final_response(client: OpenAI) -> None:
    response = client.responses.create(model="turnstream-mock", input="count to 5")
    assert response.status == "completed"
    assert response.output_text == "1 2 3 4 5"


def test_resume_from_the_middle_has_no_gap_and_no_duplicate(client: OpenAI) -> None:
    created = client.responses.create(
        model="turnstream-mock", input="count to 200 [delay=5ms]", background=True
    )
    first: list[int] = []
    stream = client.responses.retrieve(created.id, stream=True)
    for event in stream:
        first.append(event.sequence_number)
        if len(first) == 25:
            break  # the client drops the connection mid-stream
    stream.close()
    resumed = validated(client.responses.retrieve(created.id, stream=True, starting_after=first[-1]))
    seqs = first + [e.sequence_number for e in resumed]
    assert_consecutive(seqs)
    assert resumed[-1].type == "response.completed"
    text = "".join(e.delta for e in resumed if e.type == "response.output_text.delta")
    assert text.endswith("199 200")


def test_last_event_id_header_resumes_like_starting_after(client: OpenAI, stack: Stack) -> None:
    created = client.responses.create(model="turnstream-mock", input="count to 20", background=True)
    wait_for(client, created.id, TERMINAL)
    with httpx.stream(
        "GET", f"{stack.base_url}/responses/{created.id}", params={"stream": "true"}, headers={"Last-Event-ID": "5"}
    ) as r:
        assert r.headers["x-accel-buffering"] == "no"
        ids = [int(line[3:]) for line in r.iter_lines() if line.startswith("id:")]
    full = [e.sequence_number for e in client.responses.retrieve(created.id, stream=True)]
    assert ids == full[6:]


def test_stream_replays_a_finished_response_from_the_start(client: OpenAI) -> None:
    created = client.responses.create(model="turnstream-mock", input="count to 3", background=True)
    wait_for(client, created.id, TERMINAL)
    events = validated(client.responses.retrieve(created.id, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert_consecutive([e.sequence_number for e in events])


def test_input_items_lists_what_the_turn_was_given(client: OpenAI) -> None:
    response = client.responses.create(
        model="turnstream-mock",
        input=[{"role": "user", "content": "first"}, {"role": "user", "content": "second"}],
    )
    items = client.responses.input_items.list(response.id, order="asc")
    texts = [item.content[0].text for item in items.data]  # type: ignore[union-attr]
    assert texts == ["first", "second"]


def test_delete_removes_the_response(client: OpenAI) -> None:
    response = client.responses.create(model="turnstream-mock", input="hello")
    client.responses.delete(response.id)
    try:
        client.responses.retrieve(response.id)
    except Exception as exc:
        assert getattr(exc, "status_code", None) == 404
    else:
        raise AssertionError("deleted response is still retrievable")


def test_metadata_and_instructions_are_echoed(client: OpenAI) -> None:
    response = client.responses.create(
        model="turnstream-mock", input="hi", instructions="Be terse.", metadata={"ticket": "42"}
    )
    assert response.instructions == "Be terse."
    assert response.metadata == {"ticket": "42"}


def test_models_lists_the_agent_profiles(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"turnstream-mock", "plain"} <= ids
