"""Finished turns kept compact in Redis (shared/stored_form.py), read exactly as they were streamed.

A turn's SSE frames as its creator received them live are the reference: a replay, a resume after any event
(`starting_after` or `Last-Event-ID`), a gateway decoding Redis with zlib and JSON, the retrieved Response and
its input items must all give the same, whichever form the turn was stored in.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import httpx
import redis
from openai import OpenAI

from shared import keys
from tests.conftest import Stack, wait_until
from tests.integration.conftest import TERMINAL, wait_for
from tests.integration.own_stack import own_stack


def event_frames(request: httpx.Request) -> list[bytes]:
    """The SSE body's event frames, byte for byte, keep-alive comment lines and the closing [DONE] left out."""
    with httpx.Client(timeout=30) as http:
        body = http.send(request).read()
    lines = b"\n".join(line for line in body.split(b"\n") if not line.startswith(b": "))
    return [frame + b"\n\n" for frame in lines.split(b"\n\n") if frame.startswith(b"id: ")]


def streamed_turn(base_url: str, prompt: str) -> tuple[str, list[bytes]]:
    """A streamed create: the response id and the frames its creator received live."""
    body = {"model": "turnstream-mock", "input": prompt, "stream": True}
    live = event_frames(httpx.Request("POST", f"{base_url}/responses", json=body))
    return json.loads(live[0].split(b"data: ", 1)[1])["response"]["id"], live


def replayed(base_url: str, response_id: str, headers: dict[str, str] | None = None, **params: object) -> list[bytes]:
    url = f"{base_url}/responses/{response_id}"
    return event_frames(httpx.Request("GET", url, params={"stream": "true", **params}, headers=headers))


def assert_reads_as_streamed(base_url: str, response_id: str, live: list[bytes]) -> None:
    assert replayed(base_url, response_id) == live
    for after in sorted({0, 1, 2, len(live) // 2, len(live) - 2, len(live) - 1}):
        assert replayed(base_url, response_id, starting_after=after) == live[after + 1 :]
    assert replayed(base_url, response_id, headers={"Last-Event-ID": "3"}) == live[4:]


def test_a_finished_streamed_turn_is_one_entry_that_replays_and_resumes_as_it_streamed(
    stack: Stack, rds: redis.Redis
) -> None:
    response_id, live = streamed_turn(stack.base_url, "count to 60")

    [(entry_id, fields)] = rds.xrange(keys.events(response_id))
    assert set(fields) == {b"seq", b"events"} and entry_id == f"{len(live) - 1}-1".encode()
    assert_reads_as_streamed(stack.base_url, response_id, live)


def test_a_gateway_reads_a_finished_turn_from_redis_with_zlib_and_json(
    stack: Stack, rds: redis.Redis, client: OpenAI
) -> None:
    response_id, live = streamed_turn(stack.base_url, "count to 12")

    # The README's stream contract, with nothing of this project's code.
    entries = [
        event
        for _, fields in rds.xrange(keys.events(response_id))
        for event in (json.loads(zlib.decompress(fields[b"events"])) if b"events" in fields else [fields])
    ]
    sse = [f"id: {e['seq']}\nevent: {e['type']}\ndata: {e['data']}\n\n".encode() for e in entries]
    assert sse == live
    stored = rds.hget(keys.response(response_id), "response")
    response = json.loads(stored if stored[:1] == b"{" else zlib.decompress(stored))
    assert response == {**client.responses.retrieve(response_id).to_dict(), "status": "completed"}
    assert response == json.loads(live[-1].split(b"data: ", 1)[1])["response"]


def test_input_items_and_conversation_history_read_the_same_from_compact_records(client: OpenAI) -> None:
    conversation = client.conversations.create()
    first = client.responses.create(model="turnstream-mock", input="My name is Ravi.", conversation=conversation.id)
    second = client.responses.create(
        model="turnstream-mock", previous_response_id=first.id, input="What is my name?"
    )

    assert second.output_text == "Your name is Ravi."  # the chain read back through the compressed record
    [item] = client.responses.input_items.list(first.id).data
    assert item.content[0].text == "My name is Ravi."  # type: ignore[union-attr]
    history = client.conversations.items.list(conversation.id, order="asc").data
    assert [i.type for i in history] == ["message", "message"]


def test_turns_stored_before_compaction_read_the_same_after_it_is_turned_on(tmp_path: Path) -> None:
    with own_stack(tmp_path, {"TURNSTREAM_COMPACT_FINISHED_TURNS": "false"}) as stack:
        client = OpenAI(base_url=stack.base_url, api_key="unused")
        response_id, live = streamed_turn(stack.base_url, "count to 20")
        background = client.responses.create(model="turnstream-mock", input="count to 5", background=True)
        wait_for(client, background.id, TERMINAL)
        r = stack.redis.client()
        assert r.xlen(keys.events(response_id)) == len(live)  # one entry per event, as before
        assert r.hget(keys.response(response_id), "response")[:1] == b"{"
        before = client.responses.retrieve(background.id).to_dict()

        # The same records, now served by nodes that store finished turns compact.
        stack.stop("api")
        for name in stack.worker_pids():
            stack.stop(name)
        stack.env["TURNSTREAM_COMPACT_FINISHED_TURNS"] = "true"
        stack.spawn("worker-1", "worker")
        stack.spawn("api", "api")
        wait_until(lambda: httpx.get(f"{stack.api_url}/readyz").status_code == 200, 30, "the API")
        assert_reads_as_streamed(stack.base_url, response_id, live)
        assert client.responses.retrieve(background.id).to_dict() == before
        after_id, after_live = streamed_turn(stack.base_url, "count to 20")
        assert r.xlen(keys.events(after_id)) == 1
        assert_reads_as_streamed(stack.base_url, after_id, after_live)
