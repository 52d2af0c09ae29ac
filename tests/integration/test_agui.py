"""/v1/agui/{model}: AG-UI runs over raw HTTP and through Agent Framework's AGUIChatClient; every event is
validated with ag-ui-protocol's own models."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from ag_ui.core import Event, EventType
from agent_framework import Message, tool
from agent_framework_ag_ui import AGUIChatClient
from openai import OpenAI
from pydantic import TypeAdapter

from api import agui_input
from tests.conftest import ROOT, Stack
from tests.integration.conftest import wait_for
from tests.integration.keyed_stack import KeyedStack, M, http

pytestmark = pytest.mark.redis

AGUI_EVENT: TypeAdapter[Any] = TypeAdapter(Event)


def frames(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(id, event) of each SSE frame; each event validated against ag-ui-protocol's event union."""
    out = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        event = json.loads(fields["data"])
        AGUI_EVENT.validate_python(event)
        out.append((fields.get("id"), event))
    return out


def run(url: str, thread: str, messages: list[dict[str, Any]], *, run_id: str | None = None,
        headers: dict[str, str] | None = None, **extra: Any) -> tuple[httpx.Response, list[dict[str, Any]]]:
    body = {"threadId": thread, "runId": run_id or f"run-{uuid.uuid4()}", "messages": messages, **extra}
    response = httpx.post(f"{url}/agui/{M}", json=body, headers=headers, timeout=30)
    events = [event for _, event in frames(response.text)] if response.status_code == 200 else []
    return response, events


def user(text: str, message_id: str | None = None) -> dict[str, Any]:
    return {"id": message_id or f"m-{uuid.uuid4()}", "role": "user", "content": text}


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == EventType.TEXT_MESSAGE_CONTENT)


def test_a_run_streams_validated_agui_events_each_with_an_id(stack: Stack) -> None:
    response, events = run(stack.base_url, f"t-{uuid.uuid4()}", [user("count to 3")])
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert types(events)[0] == "RUN_STARTED" and types(events)[-1] == "RUN_FINISHED"
    assert types(events)[1] == "TEXT_MESSAGE_START" and types(events)[-2] == "TEXT_MESSAGE_END"
    assert text_of(events).split() == ["1", "2", "3"]
    ids = [int(frame_id) for frame_id, _ in frames(response.text) if frame_id is not None]
    assert len(ids) == len(events) and ids == sorted(set(ids)) and ids[0] == 0


def test_snake_case_input_without_tools_context_or_forwarded_props_is_accepted(stack: Stack) -> None:
    body = {"thread_id": f"t-{uuid.uuid4()}", "run_id": "r1", "messages": [user("count to 2")]}
    response = httpx.post(f"{stack.base_url}/agui/{M}", json=body, timeout=30)
    events = [e for _, e in frames(response.text)]
    assert events[0] == {"type": "RUN_STARTED", "threadId": body["thread_id"], "runId": "r1"}
    assert text_of(events).split() == ["1", "2"]


def test_a_thread_remembers_and_a_resent_history_is_not_added_twice(stack: Stack, client: OpenAI) -> None:
    thread = f"t-{uuid.uuid4()}"
    first = user("My name is Ravi.")
    _, events = run(stack.base_url, thread, [first])
    answer_id = next(e["messageId"] for e in events if e["type"] == "TEXT_MESSAGE_START")
    assistant = {"id": answer_id, "role": "assistant", "content": text_of(events)}
    # CopilotKit's way: the whole history each time, the new message last.
    _, events = run(stack.base_url, thread, [first, assistant, user("What is my name?")])
    assert "Ravi" in text_of(events)
    started = events[0]
    response_id = _response_of(stack, started["runId"])
    conversation = client.responses.retrieve(response_id).conversation
    assert conversation is not None
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"), ("message", "assistant"), ("message", "user"), ("message", "assistant")
    ]


def test_a_run_sending_only_known_messages_is_refused(stack: Stack) -> None:
    thread, message = f"t-{uuid.uuid4()}", user("count to 1")
    run(stack.base_url, thread, [message])
    response, _ = run(stack.base_url, thread, [message])
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_a_server_tool_streams_its_call_and_result(stack: Stack) -> None:
    _, events = run(stack.base_url, f"t-{uuid.uuid4()}", [user("What is the weather in Bengaluru?")])
    kinds = types(events)
    start = kinds.index("TOOL_CALL_START")
    tool_part = [k for i, k in enumerate(kinds) if k.startswith("TOOL_CALL") and k != kinds[i - 1]]
    assert tool_part == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]
    call = events[start]
    assert call["toolCallName"] == "get_weather"
    args = "".join(e["delta"] for e in events if e["type"] == "TOOL_CALL_ARGS")
    assert json.loads(args) == {"city": "Bengaluru"}
    result = events[kinds.index("TOOL_CALL_RESULT")]
    assert result["toolCallId"] == call["toolCallId"] and "Bengaluru" in result["content"]
    assert "Bengaluru" in text_of(events) and kinds[-1] == "RUN_FINISHED"


LOOKUP = {"name": "lookup_order", "description": "Look up an order.",
          "parameters": {"type": "object", "properties": {}}}


def test_a_client_tool_ends_the_run_and_its_result_continues_the_thread(stack: Stack) -> None:
    thread = f"t-{uuid.uuid4()}"
    _, events = run(stack.base_url, thread, [user("call lookup_order({})")], tools=[LOOKUP])
    kinds = [k for i, k in enumerate(types(events)) if i == 0 or k != types(events)[i - 1]]
    assert kinds == ["RUN_STARTED", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "RUN_FINISHED"]
    call_id = events[1]["toolCallId"]
    tool_message = {"id": f"tool-{uuid.uuid4()}", "role": "tool", "toolCallId": call_id, "content": "shipped"}
    _, events = run(stack.base_url, thread, [tool_message], tools=[LOOKUP])
    assert "shipped" in text_of(events) and types(events)[-1] == "RUN_FINISHED"


def test_reasoning_maps_to_reasoning_events(stack: Stack) -> None:
    _, events = run(stack.base_url, f"t-{uuid.uuid4()}", [user("[think] count to 2")])
    kinds = types(events)
    assert kinds[1:4] == ["REASONING_START", "REASONING_MESSAGE_START", "REASONING_MESSAGE_CONTENT"]
    assert kinds.index("REASONING_END") < kinds.index("TEXT_MESSAGE_START")


def test_a_failed_turn_ends_in_run_error(stack: Stack) -> None:
    _, events = run(stack.base_url, f"t-{uuid.uuid4()}", [user("[fail]")])
    assert types(events)[0] == "RUN_STARTED" and types(events)[-1] == "RUN_ERROR"
    assert events[-1]["message"]


def test_a_run_is_an_ordinary_cancellable_turn(stack: Stack, client: OpenAI) -> None:
    run_id = f"run-{uuid.uuid4()}"
    with httpx.stream("POST", f"{stack.base_url}/agui/{M}", timeout=30, json={
        "threadId": f"t-{uuid.uuid4()}", "runId": run_id, "messages": [user("[delay=50ms] count to 200")],
    }) as response:
        lines = response.iter_lines()
        for line in lines:
            if "TEXT_MESSAGE_CONTENT" in line:
                break
        response_id = _response_of(stack, run_id)
        client.responses.cancel(response_id)
        rest = "\n".join(lines)
    assert '"RUN_ERROR"' in rest and '"cancelled"' in rest
    assert wait_for(client, response_id, {"cancelled"}).status == "cancelled"


def test_reattach_after_last_event_id_sends_exactly_the_rest(stack: Stack) -> None:
    run_id, thread = f"run-{uuid.uuid4()}", f"t-{uuid.uuid4()}"
    response, _ = run(stack.base_url, thread, [user("What is the weather in Bengaluru?")], run_id=run_id)
    whole = frames(response.text)
    for cut in (0, 3, len(whole) // 2, len(whole) - 2):
        after = whole[cut][0]
        assert after is not None
        again = httpx.get(f"{stack.base_url}/agui/{M}/runs/{run_id}", headers={"Last-Event-ID": after}, timeout=30)
        assert frames(again.text) == whole[cut + 1:]
    from_start = httpx.get(f"{stack.base_url}/agui/{M}/runs/{run_id}", timeout=30)
    assert frames(from_start.text) == whole


def test_reattach_to_a_live_run_follows_it_to_the_end(stack: Stack) -> None:
    run_id = f"run-{uuid.uuid4()}"
    body = {"threadId": f"t-{uuid.uuid4()}", "runId": run_id, "messages": [user("[delay=20ms] count to 40")]}
    with httpx.stream("POST", f"{stack.base_url}/agui/{M}", json=body, timeout=30) as response:
        last_id = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                last_id = line[4:]
            if "TEXT_MESSAGE_CONTENT" in line:
                break  # the connection drops mid-run
    assert last_id is not None
    again = httpx.get(f"{stack.base_url}/agui/{M}/runs/{run_id}", headers={"Last-Event-ID": last_id}, timeout=30)
    rest = [e for _, e in frames(again.text)]
    whole = [e for _, e in frames(httpx.get(f"{stack.base_url}/agui/{M}/runs/{run_id}", timeout=30).text)]
    assert whole[-len(rest):] == rest and rest[-1]["type"] == "RUN_FINISHED"
    assert text_of(whole).split() == [str(n) for n in range(1, 41)]


def test_the_same_run_id_posted_again_replays_that_run(stack: Stack) -> None:
    run_id, thread = f"run-{uuid.uuid4()}", f"t-{uuid.uuid4()}"
    first, _ = run(stack.base_url, thread, [user("count to 2")], run_id=run_id)
    second, _ = run(stack.base_url, thread, [user("count to 2")], run_id=run_id)
    assert frames(second.text) == frames(first.text)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        (f"/agui/{M}/runs/no-such-run", {}, 404),
        ("/agui/plain/runs/RUN", {}, 404),  # another model's path
        (f"/agui/{M}/runs/RUN", {"Last-Event-ID": "x"}, 400),
        (f"/agui/{M}/runs/RUN", {"Last-Event-ID": "99999"}, 400),
    ],
    ids=["unknown-run", "other-model", "bad-last-event-id", "past-the-end"],
)
def test_reattach_errors_are_openai_shaped(stack: Stack, path: str, headers: dict[str, str], status: int) -> None:
    run_id = f"run-{uuid.uuid4()}"
    run(stack.base_url, f"t-{uuid.uuid4()}", [user("count to 1")], run_id=run_id)
    answer = httpx.get(stack.base_url + path.replace("RUN", run_id), headers=headers, timeout=30)
    assert answer.status_code == status and set(answer.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "body",
    [{}, {"threadId": "t", "runId": "r"}, {"threadId": "t", "runId": "r", "messages": [{"role": "user"}]}],
    ids=["empty", "no-messages", "message-without-id"],
)
def test_bad_run_input_is_a_400(stack: Stack, body: dict[str, Any]) -> None:
    answer = httpx.post(f"{stack.base_url}/agui/{M}", json=body, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"


def test_runs_and_threads_belong_to_the_key_s_project(keyed: KeyedStack) -> None:
    _, secret_a = keyed.key("agui-a")
    _, secret_b = keyed.key("agui-b")
    url = keyed.base_url()
    run_id, thread = f"run-{uuid.uuid4()}", f"t-{uuid.uuid4()}"
    assert httpx.post(f"{url}/agui/{M}", json={"threadId": thread, "runId": run_id, "messages": []}).status_code == 401
    with http(url, secret_a) as a, http(url, secret_b) as b:
        ok = a.post(f"/agui/{M}", json={"threadId": thread, "runId": run_id, "messages": [user("My name is Ravi.")]})
        assert ok.status_code == 200
        assert a.get(f"/agui/{M}/runs/{run_id}").status_code == 200
        assert b.get(f"/agui/{M}/runs/{run_id}").status_code == 404
        # The same threadId in another project is another thread: it does not know the name.
        other = b.post(f"/agui/{M}", json={"threadId": thread, "runId": "x", "messages": [user("What is my name?")]})
        assert "Ravi" not in text_of([e for _, e in frames(other.text)])


def test_a_thread_is_in_the_project_s_conversation_list_until_it_is_deleted(keyed: KeyedStack) -> None:
    _, secret = keyed.key("agui-listed")
    thread = f"t-{uuid.uuid4()}"
    with http(keyed.api_urls[0], secret) as client:
        plain = client.post("/v1/conversations", json={}).json()["id"]
        assert client.post(f"/v1/agui/{M}", json={"threadId": thread, "runId": f"run-{uuid.uuid4()}",
                                                   "messages": [user("My name is Ravi.")]}).status_code == 200
        listed = client.get("/v1/conversations").json()["data"]
        assert [c["id"] for c in listed][1:] == [plain]  # the thread's conversation, newest first
        conversation = listed[0]
        assert conversation["metadata"] == {"agui_thread_id": thread}

        assert client.delete(f"/v1/conversations/{conversation['id']}").status_code == 200
        assert [c["id"] for c in client.get("/v1/conversations").json()["data"]] == [plain]

        # A run on the deleted thread starts it afresh, listed again and with no memory of the name.
        again = client.post(f"/v1/agui/{M}", json={"threadId": thread, "runId": f"run-{uuid.uuid4()}",
                                                   "messages": [user("What is my name?")]})
        assert "Ravi" not in text_of([e for _, e in frames(again.text)])
        assert [c["id"] for c in client.get("/v1/conversations").json()["data"]] == [conversation["id"], plain]


def _response_of(stack: Stack, run_id: str) -> str:
    """The response id behind a run, from the header every AG-UI stream carries."""
    with httpx.stream("GET", f"{stack.base_url}/agui/{M}/runs/{run_id}", timeout=30) as response:
        return response.headers["x-turnstream-response-id"]


# --- Agent Framework's AGUIChatClient ------------------------------------------------------------------------


@tool
def lookup_order() -> str:
    """Look up an order."""
    return "shipped"


async def test_agui_chat_client_keeps_a_multi_turn_thread_and_streams(stack: Stack) -> None:
    options: Any = {"metadata": {"thread_id": f"t-{uuid.uuid4()}"}}
    async with AGUIChatClient(endpoint=f"{stack.base_url}/agui/{M}") as agui:
        first = await agui.get_response([Message(role="user", contents=["My name is Ravi."])], options=options)
        assert first.text == "Nice to meet you, Ravi."
        updates = [
            u async for u in agui.get_response(
                [Message(role="user", contents=["What is my name?"])], stream=True, options=options
            )
        ]
    pieces = [u.text for u in updates if u.text]
    assert len(pieces) > 1 and "".join(pieces) == "Your name is Ravi."


async def test_agui_chat_client_runs_a_client_tool_and_the_thread_continues(stack: Stack) -> None:
    thread = f"t-{uuid.uuid4()}"
    options: Any = {"metadata": {"thread_id": thread}, "tools": [lookup_order]}
    async with AGUIChatClient(endpoint=f"{stack.base_url}/agui/{M}") as agui:
        answer = await agui.get_response([Message(role="user", contents=["call lookup_order({})"])], options=options)
    assert [m.role for m in answer.messages] == ["assistant", "tool", "assistant"]
    assert answer.text == "Tool lookup_order returned: shipped."
    # The thread holds the exchange once: the loop's re-sent user message was recognised as history.
    conversation = agui_input.thread_conversation_id("default", thread)
    async with httpx.AsyncClient() as plain:
        listed = await plain.get(f"{stack.base_url}/conversations/{conversation}/items", params={"order": "asc"})
    items = listed.json()["data"]
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output", "message"]


class Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk


class DropOnce(httpx.AsyncBaseTransport):
    """Cuts the first AG-UI stream after `frames` frames, as a dropped connection would, and then re-attaches
    by the run's id with Last-Event-ID, so the client above sees one whole stream: what a resuming client
    layer does with this endpoint."""

    def __init__(self, frames: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.frames = frames
        self.reattached = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "POST":
            return response
        body = json.loads(request.content)
        url = f"{str(request.url).rstrip('/')}/runs/{body.get('runId') or body['run_id']}"
        stream = Stream(self._resume(response, url))
        return httpx.Response(response.status_code, headers=response.headers, stream=stream)

    async def _resume(self, response: httpx.Response, url: str) -> AsyncIterator[bytes]:
        last_id, sent = None, 0
        buffer = b""
        async for chunk in response.aiter_raw():
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                if self.frames and sent == self.frames:
                    self.frames = 0  # the drop: the rest of this stream is lost
                    await response.aclose()
                    async for rest in self._reattach(url, last_id):
                        yield rest
                    return
                if frame.startswith(b"id: "):
                    last_id = frame[4:].split(b"\n", 1)[0].decode()
                sent += 1
                yield frame + b"\n\n"

    async def _reattach(self, url: str, last_id: str | None) -> AsyncIterator[bytes]:
        self.reattached += 1
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        async with httpx.AsyncClient() as client, client.stream("GET", url, headers=headers) as again:
            async for chunk in again.aiter_raw():
                yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_agui_chat_client_gets_the_whole_answer_once_across_a_dropped_connection(stack: Stack) -> None:
    transport = DropOnce(frames=6)
    options: Any = {"metadata": {"thread_id": f"t-{uuid.uuid4()}"}}
    async with httpx.AsyncClient(transport=transport, timeout=30) as http_client:
        agui = AGUIChatClient(endpoint=f"{stack.base_url}/agui/{M}", http_client=http_client)
        updates = [
            u async for u in agui.get_response(
                [Message(role="user", contents=["[delay=10ms] count to 30"])], stream=True, options=options
            )
        ]
    assert transport.reattached == 1
    assert "".join(u.text for u in updates if u.text).split() == [str(n) for n in range(1, 31)]


def test_readme_agui_curl_block_runs_verbatim(stack: Stack) -> None:
    block = re.search(r"<!-- shell: agui -->\n```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    thread, run_id = f"thread-{uuid.uuid4()}", f"run-{uuid.uuid4()}"
    script = block.group(1).replace("http://127.0.0.1:8000", stack.api_url)
    script = script.replace("thread-1", thread).replace("run-1", run_id)
    result = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    run_frames = frames(result.stdout)
    first_end = next(i for i, (_, e) in enumerate(run_frames) if e["type"] == "RUN_FINISHED")
    posted, reattached = run_frames[: first_end + 1], run_frames[first_end + 1 :]
    assert "TOOL_CALL_RESULT" in types([e for _, e in posted])
    assert reattached == [f for f in posted if f[0] is not None and int(f[0]) > 5]


def test_an_unknown_model_is_a_400_and_leaves_the_run_id_free(stack: Stack) -> None:
    run_id, thread = f"run-{uuid.uuid4()}", f"t-{uuid.uuid4()}"
    body = {"threadId": thread, "runId": run_id, "messages": [user("count to 1")]}
    refused = httpx.post(f"{stack.base_url}/agui/no-such-model", json=body, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{stack.base_url}/agui/no-such-model/runs/{run_id}", timeout=30).status_code == 404
    accepted, events = run(stack.base_url, thread, body["messages"], run_id=run_id)
    assert accepted.status_code == 200 and text_of(events) == "1"
