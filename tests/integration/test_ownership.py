"""Every object belongs to its project: another project gets, on every route and in both directions, exactly
the 404 an id that does not exist gets, and changes nothing. Keys are made as the README says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import OpenAI

from shared import ids, keys
from shared.models import TurnRequest
from shared.redis_conn import connect
from shared.response_record import chain_items
from shared.settings import Settings
from tests.integration.conftest import wait_for
from tests.integration.keyed_stack import KeyedStack, M, http

LONG_TURN = "count to 2400 [delay=25ms]"  # 60 s, cancelled at the end: running while another project tries all


@dataclass
class Owned:
    """One project's objects: a finished response in a conversation, and a turn still running."""

    secret: str
    conversation: str
    item: str
    done: str
    running: str


@pytest.fixture(scope="module")
def projects(keyed: KeyedStack) -> Iterator[dict[str, Owned]]:
    owned = {}
    for project in ("team-a", "team-b"):
        secret = keyed.cli_key(project, "--name", "matrix")
        with keyed.client(secret) as client:
            conv = client.conversations.create(metadata={"owner": project})
            done = client.responses.create(model=M, input="My name is Ravi.", conversation=conv.id)
            running = client.responses.create(model=M, input=LONG_TURN, background=True)
            wait_for(client, running.id, {"in_progress"})
            item = client.conversations.items.list(conv.id).data[0].id
        owned[project] = Owned(secret, conv.id, item, done.id, running.id)
    yield owned
    for o in owned.values():
        with keyed.client(o.secret) as client:
            client.responses.cancel(o.running)


def _requests(o: Owned) -> list[tuple[str, str, dict[str, Any] | None, dict[str, str]]]:
    """(method, path, json body, headers) for every route that names one of the project's objects."""
    per_response = []
    for r in (o.done, o.running):
        per_response += [
            ("GET", f"/v1/responses/{r}", None, {}),
            ("GET", f"/v1/responses/{r}?stream=true", None, {}),
            ("GET", f"/v1/responses/{r}?stream=true&starting_after=1", None, {}),
            ("GET", f"/v1/responses/{r}?stream=true", None, {"Last-Event-ID": "1"}),
            ("GET", f"/v1/responses/{r}/input_items", None, {}),
            ("POST", f"/v1/responses/{r}/cancel", None, {}),
            ("DELETE", f"/v1/responses/{r}", None, {}),
            ("POST", "/v1/responses", {"model": M, "input": "What is my name?", "previous_response_id": r}, {}),
            ("POST", "/v1/responses", {"model": M, "input": "hi", "previous_response_id": r, "stream": True}, {}),
            ("POST", "/v1/responses/compact", {"model": M, "previous_response_id": r}, {}),
        ]
    c = o.conversation
    per_conversation = [
        ("GET", f"/v1/conversations/{c}", None, {}),
        ("POST", f"/v1/conversations/{c}", {"metadata": {"owner": "intruder"}}, {}),
        ("DELETE", f"/v1/conversations/{c}", None, {}),
        ("GET", f"/v1/conversations/{c}/items", None, {}),
        ("GET", f"/v1/conversations/{c}/items/{o.item}", None, {}),
        ("POST", "/v1/responses", {"model": M, "input": "What is my name?", "conversation": c}, {}),
        ("POST", "/v1/responses", {"model": M, "input": "hi", "conversation": {"id": c}, "background": True}, {}),
    ]
    return per_response + per_conversation


def _missing(o: Owned) -> Owned:
    """The same shape of objects, with ids that exist nowhere."""
    return Owned(o.secret, ids.conversation_id(), ids.message_id(), ids.response_id(), ids.response_id())


def _answer(client: httpx.Client, request: tuple[str, str, dict[str, Any] | None, dict[str, str]]) -> Any:
    method, path, body, headers = request
    r = client.request(method, path, json=body, headers=headers)
    return r.status_code, r.json()


def _with_ids_blanked(answer: Any, o: Owned) -> str:
    text = json.dumps(answer)
    for ident in (o.conversation, o.item, o.done, o.running):
        text = text.replace(ident, "<id>")
    return text


@pytest.mark.parametrize(("owner", "intruder"), [("team-a", "team-b"), ("team-b", "team-a")])
@pytest.mark.parametrize("node", [0, 1])
def test_another_project_gets_exactly_the_answer_of_a_missing_id_on_every_route(
    keyed: KeyedStack, projects: dict[str, Owned], owner: str, intruder: str, node: int
) -> None:
    theirs, missing = projects[owner], _missing(projects[owner])
    with http(keyed.api_urls[node], projects[intruder].secret) as client:
        for foreign, absent in zip(_requests(theirs), _requests(missing), strict=True):
            got, expected = _answer(client, foreign), _answer(client, absent)
            # A previous_response_id that cannot be used is a 400 of its own code (as with OpenAI), never a 404.
            assert got[0] == (400 if "previous_response_id" in (foreign[2] or {}) else 404), (foreign, got)
            assert _with_ids_blanked(got, theirs) == _with_ids_blanked(expected, missing), foreign
    _assert_untouched(keyed, theirs, owner)


@pytest.mark.parametrize(("owner", "intruder"), [("team-a", "team-b"), ("team-b", "team-a")])
def test_another_project_gets_not_found_through_the_sdk(
    keyed: KeyedStack, projects: dict[str, Owned], owner: str, intruder: str
) -> None:
    theirs = projects[owner]
    calls: list[Callable[[OpenAI], object]] = [
        lambda c: c.responses.retrieve(theirs.done),
        lambda c: list(c.responses.retrieve(theirs.running, stream=True)),
        lambda c: list(c.responses.retrieve(theirs.running, stream=True, starting_after=1)),
        lambda c: c.responses.cancel(theirs.running),
        lambda c: c.responses.delete(theirs.done),
        lambda c: c.responses.input_items.list(theirs.done),
        lambda c: c.responses.create(model=M, input="What is my name?", conversation=theirs.conversation),
        lambda c: c.conversations.retrieve(theirs.conversation),
        lambda c: c.conversations.update(theirs.conversation, metadata={"owner": "intruder"}),
        lambda c: c.conversations.delete(theirs.conversation),
        lambda c: c.conversations.items.list(theirs.conversation),
        lambda c: c.conversations.items.retrieve(theirs.item, conversation_id=theirs.conversation),
    ]
    with keyed.client(projects[intruder].secret, node=1) as client:
        for call in calls:
            with pytest.raises(openai.NotFoundError) as caught:
                call(client)
            assert caught.value.code == "not_found"
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=M, input="What is my name?", previous_response_id=theirs.done)
        assert refused.value.code == "previous_response_not_found"
    _assert_untouched(keyed, theirs, owner)


def _assert_untouched(keyed: KeyedStack, o: Owned, project: str) -> None:
    with keyed.client(o.secret) as client:
        assert client.conversations.retrieve(o.conversation).metadata == {"owner": project}
        assert len(client.conversations.items.list(o.conversation).data) == 2
        assert client.responses.retrieve(o.done).status == "completed"
        assert client.responses.retrieve(o.running).status == "in_progress"  # not cancelled, not deleted


def test_the_owner_chains_onto_its_own_objects(keyed: KeyedStack, projects: dict[str, Owned]) -> None:
    o = projects["team-a"]
    with keyed.client(o.secret, node=1) as client:
        chained = client.responses.create(model=M, input="What is my name?", previous_response_id=o.done)
    assert chained.output_text == "Your name is Ravi."


def test_the_conversation_object_does_not_show_its_project(keyed: KeyedStack, projects: dict[str, Owned]) -> None:
    o = projects["team-b"]
    with http(keyed.api_urls[0], o.secret) as client:
        body = client.get(f"/v1/conversations/{o.conversation}").json()
    assert set(body) == {"id", "object", "created_at", "metadata"}
    with keyed.redis() as r:
        assert json.loads(r.get(keys.conversation(o.conversation)) or b"{}")["project"] == "team-b"
        assert r.hget(keys.response(o.done), "project") == b"team-b"


def test_the_history_loader_stops_at_a_response_of_another_project(keyed: KeyedStack) -> None:
    # Only infrastructure with direct Redis access could write such a chain; the worker still refuses it.
    async def chain() -> tuple[list[Any], list[Any]]:
        redis_client = await connect(Settings(redis_url=keyed.redis_url))
        try:
            foreign = await _store_turn(redis_client, "team-a", "secret plans", None)
            own = await _store_turn(redis_client, "team-b", "hello", foreign)
            return (
                await chain_items(redis_client, own, 10, "team-b"),
                await chain_items(redis_client, own, 10, "team-a"),
            )
        finally:
            await redis_client.aclose()

    as_b, as_a = asyncio.run(chain())
    assert [i["content"][0]["text"] for i in as_b] == ["hello"]
    assert as_a == []


async def _store_turn(r: redis.asyncio.Redis, project: str, text: str, previous: str | None) -> str:
    req = TurnRequest(
        response_id=ids.response_id(),
        model=M,
        input=[{"id": ids.message_id(), "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": text}]}],
        previous_response_id=previous,
        project=project,
    )
    await r.hset(
        keys.response(req.response_id),
        mapping={"status": "completed", "request": req.model_dump_json(), "response": json.dumps({"output": []}),
                 "project": project},
    )
    await r.expire(keys.response(req.response_id), 600)
    return req.response_id
