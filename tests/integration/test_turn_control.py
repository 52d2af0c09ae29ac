"""Turn control across two API nodes: double-texting policies (interrupt, rollback, racing creates), cancel on
disconnect, and a second device following a conversation's live feed.

One stack of its own (its own redis-server, two API processes, two workers), so the worker kills here disturb
no other test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from shared import keys
from tests.conftest import Stack, free_port, wait_until
from tests.integration.conftest import TERMINAL, assert_consecutive, validated, wait_for
from tests.integration.own_stack import own_stack
from tests.integration.sse_client import frames

M = "turnstream-mock"
LONG = "count to 2000 [delay=10ms]"  # ~20 s: always still running when the next turn comes


@pytest.fixture(scope="module")
def control_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("control")
    with own_stack(root, {}, workers=2) as stack:
        port = free_port()
        stack.spawn("api-2", "api", env={"TURNSTREAM_PORT": str(port)})
        stack.env["API_2_URL"] = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 30, "the second API")
        yield stack


@pytest.fixture(scope="module")
def nodes(control_stack: Stack) -> list[str]:
    return [control_stack.api_url, control_stack.env["API_2_URL"]]


@pytest.fixture(scope="module")
def clients(nodes: list[str]) -> Iterator[list[OpenAI]]:
    made = [OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=60) for url in nodes]
    yield made
    for client in made:
        client.close()


def _ensure_workers(stack: Stack) -> None:
    for name in ("worker-1", "worker-2"):
        if name not in stack.procs or stack.procs[name].poll() is not None:
            stack.procs.pop(name, None)
            stack.spawn(name, "worker")


def _items(client: OpenAI, conversation_id: str) -> list[dict[str, Any]]:
    return [i.model_dump() for i in client.conversations.items.list(conversation_id, order="asc", limit=100).data]


def _texts(items: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(role, status, text) of each message item."""
    return [(i["role"], i.get("status") or "", i["content"][0].get("text", "")) for i in items]


def _streaming(client: OpenAI, conversation_id: str, deltas: int = 5) -> tuple[str, Iterator[Any]]:
    """A long turn on the conversation, its stream followed until `deltas` text deltas have arrived."""
    created = client.responses.create(model=M, input=LONG, conversation=conversation_id, background=True)
    stream = iter(client.responses.retrieve(created.id, stream=True))
    seen = 0
    for event in stream:
        seen += event.type == "response.output_text.delta"
        if seen >= deltas:
            break
    return created.id, stream


# --- interrupt and rollback ------------------------------------------------------------------------


def test_interrupt_stops_the_running_turn_keeps_its_partial_answer_and_the_new_turn_sees_it(
    clients: list[OpenAI],
) -> None:
    conv = clients[0].conversations.create()
    first, tail = _streaming(clients[0], conv.id)

    second = clients[1].responses.create(
        model=M, input="[echo-request]", conversation=conv.id, extra_body={"conversation_lock": "interrupt"}
    )

    # Everyone tailing the interrupted turn sees its stream end properly.
    rest = validated(tail)
    assert rest[-1].type == "response.incomplete" and rest[-1].response.status == "cancelled"
    stopped = clients[0].responses.retrieve(first)
    assert stopped.status == "cancelled"
    partial = stopped.output[0].content[0].text  # type: ignore[union-attr]
    assert partial.startswith("1 2 3 4 5") and not partial.endswith("2000")
    assert second.status == "completed"
    items = _items(clients[0], conv.id)
    assert _texts(items)[:3] == [("user", "completed", LONG), ("assistant", "incomplete", partial),
                                 ("user", "completed", "[echo-request]")]
    assert len(items) == 4
    assert partial in second.output_text  # the new turn's prompt held the interrupted turn's answer


def test_rollback_stops_the_running_turn_and_leaves_nothing_of_it_in_the_conversation(clients: list[OpenAI]) -> None:
    conv = clients[0].conversations.create()
    clients[0].responses.create(model=M, input="My name is Ravi.", conversation=conv.id)
    first, tail = _streaming(clients[1], conv.id)

    second = clients[0].responses.create(
        model=M, input="[echo-request]", conversation=conv.id, extra_body={"conversation_lock": "rollback"}
    )

    rest = validated(tail)
    assert rest[-1].type == "response.incomplete" and rest[-1].response.status == "cancelled"
    stopped = clients[1].responses.retrieve(first)
    assert stopped.status == "cancelled"
    partial = stopped.output[0].content[0].text  # type: ignore[union-attr]
    assert second.status == "completed"
    items = _items(clients[0], conv.id)
    assert [i["role"] for i in items] == ["user", "assistant", "user", "assistant"]
    assert _texts(items)[0][2] == "My name is Ravi." and _texts(items)[2][2] == "[echo-request]"
    assert LONG not in second.output_text and partial not in second.output_text
    assert "My name is Ravi." in second.output_text  # what came before the rolled-back turn stays


@pytest.mark.parametrize("lock", ["interrupt", "rollback"])
def test_a_queued_turn_ahead_is_cancelled_at_once_and_adds_nothing(clients: list[OpenAI], lock: str) -> None:
    conv = clients[0].conversations.create()
    first, tail = _streaming(clients[0], conv.id)
    queued = clients[1].responses.create(model=M, input="never answered", conversation=conv.id, background=True)

    third = clients[1].responses.create(model=M, input="count to 3", conversation=conv.id,
                                        extra_body={"conversation_lock": lock})

    assert clients[0].responses.retrieve(queued.id).status == "cancelled"
    events = validated(clients[0].responses.retrieve(queued.id, stream=True))
    assert [e.type for e in events] == ["response.created", "response.queued", "response.incomplete"]
    assert_consecutive([e.sequence_number for e in events])
    validated(tail)
    assert clients[0].responses.retrieve(first).status == "cancelled"
    assert third.status == "completed" and third.output_text == "1 2 3"
    texts = [text for _, _, text in _texts(_items(clients[0], conv.id))]
    assert "never answered" not in texts
    assert texts[-2:] == ["count to 3", "1 2 3"]
    assert (LONG in texts) == (lock == "interrupt")


@pytest.mark.parametrize("lock", ["wait", "reject", "interrupt", "rollback"])
def test_racing_creates_on_two_nodes_never_run_two_turns_of_a_conversation(
    clients: list[OpenAI], control_stack: Stack, lock: str
) -> None:
    conv = clients[0].conversations.create()
    rds = control_stack.redis.client()
    running_at_once: list[int] = []
    done = threading.Event()

    def watch() -> None:
        # Every turn seen in the conversation's queue, their statuses read in one transaction: a snapshot.
        turns, seen = keys.conversation_turns(conv.id), set[bytes]()
        while not done.is_set():
            seen.update(rds.lrange(turns, 0, -1))
            with rds.pipeline(transaction=True) as pipe:
                for rid in seen:
                    pipe.hget(keys.response(rid.decode()), "status")
                running_at_once.append(pipe.execute().count(b"in_progress"))
            time.sleep(0.005)

    def create(n: int) -> tuple[int, str | None]:
        try:
            return n, clients[n % 2].responses.create(
                model=M, input=f"count to 40 [delay=10ms] #{n}", conversation=conv.id, background=True,
                extra_body={"conversation_lock": lock},
            ).id
        except openai.ConflictError as exc:
            assert exc.code == "conversation_locked"
            return n, None

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(6) as pool:
            number = {rid: n for n, rid in pool.map(create, range(6)) if rid}
        finals = {rid: wait_for(clients[0], rid, TERMINAL, timeout=60) for rid in number}
    finally:
        done.set()
        watcher.join()

    assert max(running_at_once) <= 1
    # Accept order, as the conversation's feed recorded each turn's response.created.
    feed = httpx.get(f"{control_stack.base_url}/conversations/{conv.id}/events", params={"starting_after": -1}).json()
    order = [e["response_id"] for e in feed["data"] if e["type"] == "response.created"]
    assert sorted(order) == sorted(number)
    statuses = [finals[rid].status for rid in order]
    items = _items(clients[0], conv.id)
    users = [int(i["content"][0]["text"].rsplit("#", 1)[1]) for i in items if i["role"] == "user"]
    answers = [i["content"][0]["text"] for i in items if i["role"] == "assistant"]
    if lock in ("wait", "reject"):
        assert set(statuses) == {"completed"} and len(order) >= 1
        assert users == [number[rid] for rid in order]
        assert answers == [finals[rid].output_text for rid in order]
        if lock == "wait":
            assert len(order) == 6
        return
    # Whichever came last stopped every turn ahead of it and ran to the end.
    assert statuses[-1] == "completed" and set(statuses[:-1]) <= {"cancelled", "completed"}
    completed = [rid for rid in order if finals[rid].status == "completed"]
    # Each turn's items are whole and in accept order: a stopped turn's never interleave another's.
    assert users == [number[rid] for rid in order if number[rid] in users]
    assert users[-1] == number[order[-1]]
    if lock == "rollback":  # the stopped turns left nothing
        assert users == [number[rid] for rid in completed]
        assert answers == [finals[rid].output_text for rid in completed]


# --- a killed worker during an interrupt -------------------------------------------------------------


def test_an_interrupt_while_the_running_turns_worker_is_dead_keeps_what_it_streamed(
    clients: list[OpenAI], control_stack: Stack
) -> None:
    _ensure_workers(control_stack)
    conv = clients[0].conversations.create()
    first, tail = _streaming(clients[0], conv.id, deltas=20)
    for name in ("worker-1", "worker-2"):
        control_stack.stop(name, kill=True)  # the cancel published now reaches no one

    second = clients[1].responses.create(model=M, input="count to 3", conversation=conv.id, background=True,
                                         extra_body={"conversation_lock": "interrupt"})
    _ensure_workers(control_stack)

    rest = validated(tail)  # the tail of the interrupted turn still ends properly, after the re-run
    assert rest[-1].type == "response.incomplete" and rest[-1].response.status == "cancelled"
    assert wait_for(clients[1], second.id, TERMINAL, timeout=60).status == "completed"
    stopped = clients[0].responses.retrieve(first)
    assert stopped.status == "cancelled"
    texts = _texts(_items(clients[0], conv.id))
    assert texts[0] == ("user", "completed", LONG)
    assert texts[1][:2] == ("assistant", "incomplete")
    assert texts[1][2].startswith(" ".join(str(n) for n in range(1, 21)))  # at least what was streamed
    assert texts[2:] == [("user", "completed", "count to 3"), ("assistant", "completed", "1 2 3")]
    assert stopped.output[0].content[0].text == texts[1][2]  # type: ignore[union-attr]


def test_a_rollback_while_the_running_turns_worker_is_dead_leaves_nothing_of_it(
    clients: list[OpenAI], control_stack: Stack
) -> None:
    _ensure_workers(control_stack)
    conv = clients[0].conversations.create()
    first, tail = _streaming(clients[0], conv.id, deltas=20)
    for name in ("worker-1", "worker-2"):
        control_stack.stop(name, kill=True)

    second = clients[1].responses.create(model=M, input="count to 3", conversation=conv.id, background=True,
                                         extra_body={"conversation_lock": "rollback"})
    _ensure_workers(control_stack)

    rest = validated(tail)
    assert rest[-1].type == "response.incomplete" and rest[-1].response.status == "cancelled"
    assert wait_for(clients[1], second.id, TERMINAL, timeout=60).status == "completed"
    assert clients[0].responses.retrieve(first).status == "cancelled"
    assert _texts(_items(clients[0], conv.id)) == [("user", "completed", "count to 3"),
                                                  ("assistant", "completed", "1 2 3")]


# --- cancel on disconnect ----------------------------------------------------------------------------


def _open_stream(url: str, body: dict[str, Any], deltas: int = 3) -> tuple[str, int]:
    """POSTs a streamed create, reads until `deltas` text deltas, then drops the connection; returns the
    response id and the last event id read."""
    response_id, last = "", -1
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{url}/v1/responses", json=body) as r:
        assert r.status_code == 200
        seen = 0
        for frame in frames(r):
            last = frame.id if frame.id is not None else last
            if frame.event == "response.created":
                response_id = frame.json()["response"]["id"]
            seen += frame.event == "response.output_text.delta"
            if seen >= deltas:
                break
    return response_id, last


def test_a_closed_streaming_client_cancels_its_opted_in_turn_within_a_second(
    clients: list[OpenAI], nodes: list[str]
) -> None:
    _ensure_workers_of(clients)
    response_id, _ = _open_stream(nodes[0], {"model": M, "input": LONG, "stream": True, "cancel_on_disconnect": True})
    closed = time.monotonic()

    final = wait_for(clients[1], response_id, TERMINAL, timeout=10)

    assert final.status == "cancelled"
    assert time.monotonic() - closed < 1.0
    # The upstream request stopped with it: no more tokens arrive.
    deltas = len([e for e in clients[0].responses.retrieve(response_id, stream=True)
                  if e.type == "response.output_text.delta"])
    time.sleep(0.3)
    assert len([e for e in clients[0].responses.retrieve(response_id, stream=True)
                if e.type == "response.output_text.delta"]) == deltas < 200


def test_a_client_that_resumes_on_another_node_within_the_grace_keeps_its_turn(nodes: list[str]) -> None:
    body = {"model": M, "input": "count to 100 [delay=10ms]", "stream": True, "cancel_on_disconnect": True}
    response_id, last = _open_stream(nodes[0], body)

    resumed = []
    with httpx.Client(timeout=30) as http, http.stream(
        "GET", f"{nodes[1]}/v1/responses/{response_id}", params={"stream": "true"}, headers={"Last-Event-ID": str(last)}
    ) as r:
        resumed = [frame for frame in frames(r)]

    assert resumed[-1].data == "[DONE]"
    events = resumed[:-1]
    assert [f.id for f in events] == list(range(last + 1, last + 1 + len(events)))  # no gap, no duplicate
    assert events[-1].event == "response.completed"
    assert events[-1].json()["response"]["output"][0]["content"][0]["text"].endswith("99 100")


def test_a_resumed_client_that_leaves_again_still_cancels_its_turn(clients: list[OpenAI], nodes: list[str]) -> None:
    response_id, last = _open_stream(nodes[0], {"model": M, "input": LONG, "stream": True,
                                                "cancel_on_disconnect": True})
    with httpx.Client(timeout=30) as http, http.stream(
        "GET", f"{nodes[1]}/v1/responses/{response_id}", params={"stream": "true"}, headers={"Last-Event-ID": str(last)}
    ) as r:
        for frame in frames(r):
            if frame.event == "response.output_text.delta" and frame.id is not None and frame.id > last + 3:
                break
        assert clients[0].responses.retrieve(response_id).status == "in_progress"  # kept while it reads

    assert wait_for(clients[1], response_id, TERMINAL, timeout=10).status == "cancelled"


def test_background_turns_and_plain_tails_never_cancel_on_disconnect(clients: list[OpenAI], nodes: list[str]) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        clients[0].responses.create(model=M, input="hi", background=True, extra_body={"cancel_on_disconnect": True})
    assert refused.value.param == "cancel_on_disconnect"

    created = clients[0].responses.create(model=M, input="count to 60 [delay=10ms]", background=True)
    with httpx.Client(timeout=30) as http, http.stream(
        "GET", f"{nodes[1]}/v1/responses/{created.id}", params={"stream": "true"}, headers={"Last-Event-ID": "0"}
    ) as r:
        for frame in frames(r):
            if frame.event == "response.output_text.delta":
                break

    assert wait_for(clients[0], created.id, TERMINAL, timeout=30).status == "completed"


def _ensure_workers_of(clients: list[OpenAI]) -> None:
    """Waits until a worker answers (after the kill test, the re-spawned ones may still be starting)."""
    clients[0].responses.create(model=M, input="count to 1")


# --- the conversation's live feed --------------------------------------------------------------------


def test_a_second_client_follows_both_devices_turns_live_with_no_gap_after_a_reconnect(
    clients: list[OpenAI], nodes: list[str]
) -> None:
    conv = clients[0].conversations.create()
    seen: list[Any] = []
    started = threading.Event()

    def follow(node: str, after: int | None, until: int) -> None:
        headers = {"Last-Event-ID": str(after)} if after is not None else {}
        with httpx.Client(timeout=30) as http, http.stream(
            "GET", f"{node}/v1/conversations/{conv.id}/events", params={"stream": "true"}, headers=headers
        ) as r:
            assert r.status_code == 200
            started.set()
            terminals = 0
            for frame in frames(r):
                seen.append(frame)
                terminals += frame.event in ("response.completed", "response.incomplete", "response.failed")
                if terminals == until:
                    return

    follower = threading.Thread(target=follow, args=(nodes[1], None, 1))
    follower.start()
    started.wait(10)
    first = clients[0].responses.create(model=M, input="My name is Ravi.", conversation=conv.id)  # device 1
    follower.join(30)
    # The follower reconnects on the other node from its last event while device 2 talks.
    second = clients[1].responses.create(model=M, input="count to 30 [delay=10ms]", conversation=conv.id,
                                         background=True)
    follower = threading.Thread(target=follow, args=(nodes[0], seen[-1].id, 1))
    follower.start()
    follower.join(30)

    assert [f.id for f in seen] == list(range(len(seen)))  # one cursor over both turns: no gap, no duplicate
    bodies = [f.json() for f in seen]
    turns = [b["response_id"] for b in bodies]
    assert turns == [first.id] * turns.count(first.id) + [second.id] * turns.count(second.id)
    for rid in (first.id, second.id):
        own = [b for b in bodies if b["response_id"] == rid]
        assert_consecutive([b["sequence_number"] for b in own])
        validated([{k: v for k, v in b.items() if k != "response_id"} for b in own])  # the SDK's own events
        assert own[0]["type"] == "response.created" and own[-1]["type"] == "response.completed"
    assert [f.event for f in seen] == [b["type"] for b in bodies]
    # The same events are listed from any point in the past.
    url = f"{nodes[0]}/v1/conversations/{conv.id}/events"
    listed = httpx.get(url, params={"starting_after": 2}).json()
    assert listed["data"] == bodies[3:] and not listed["has_more"]
    paged = httpx.get(url, params={"starting_after": 2, "limit": 4}).json()
    assert (paged["data"], paged["last_event_id"], paged["has_more"]) == (bodies[3:7], 6, True)
    assert httpx.get(url, params={"limit": 101}).status_code == 400


def test_a_feed_cursor_past_the_newest_event_is_refused(nodes: list[str], clients: list[OpenAI]) -> None:
    conv = clients[0].conversations.create()
    r = httpx.get(f"{nodes[0]}/v1/conversations/{conv.id}/events", params={"stream": "true", "starting_after": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "starting_after"
