"""The mock model through the real openai SDK over HTTP, plus the brain's rules on their own."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from itertools import count
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from openai import OpenAI
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.chat import ChatCompletionMessageFunctionToolCall as FunctionToolCall

from shared.mock.brain import decide, parse_directives, tokenize
from shared.mock.server import create_app


def _tool(name: str) -> ChatCompletionFunctionToolParam:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


WEATHER = _tool("get_weather")
TIME = _tool("get_time")
SLOW = _tool("slow_tool")


class _Server:
    def __init__(self, app: FastAPI, port: int) -> None:
        self.app = app
        self.base_url = f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def mock_server() -> Iterator[_Server]:
    app = create_app(token_delay_ms=0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "mock model did not start"
        time.sleep(0.01)
    yield _Server(app, port)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def client(mock_server: _Server) -> OpenAI:
    return OpenAI(base_url=mock_server.base_url, api_key="x", max_retries=0, timeout=10)


def _user(text: str) -> ChatCompletionUserMessageParam:
    return {"role": "user", "content": text}


def _stream_chunks(
    client: OpenAI, messages: list[ChatCompletionMessageParam], **kwargs: Any
) -> list[ChatCompletionChunk]:
    stream = client.chat.completions.create(model="any-model", messages=messages, stream=True, **kwargs)
    return list(stream)


def _assemble_calls(chunks: list[ChatCompletionChunk]) -> tuple[dict[int, dict[str, Any]], dict[int, int]]:
    """Rebuild tool calls from deltas the way a client must; also count argument fragments per call."""
    calls: dict[int, dict[str, Any]] = {}
    fragments: dict[int, int] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                if delta.id:
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
                    fragments[delta.index] = fragments.get(delta.index, 0) + 1
    return calls, fragments


def _finish_reason(chunks: list[ChatCompletionChunk]) -> str | None:
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(reasons) == 1
    return reasons[0]


# --- through the SDK -----------------------------------------------------------------------------


def test_streamed_text_concatenates_and_ends_with_usage(client: OpenAI) -> None:
    chunks = _stream_chunks(
        client, [_user("Hello there, mock model")], stream_options={"include_usage": True}
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: Hello there, mock model"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 6
    assert _finish_reason(chunks) == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 4
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.total_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].model == "any-model"


@pytest.mark.parametrize("directive, key", [("[think]", "reasoning_content"), ("[think:reasoning]", "reasoning")])
def test_think_streams_reasoning_before_the_answer_and_counts_it(client: OpenAI, directive: str, key: str) -> None:
    chunks = _stream_chunks(client, [_user(f"Hello {directive}")], stream_options={"include_usage": True})
    deltas = [c.choices[0].delta.model_dump() for c in chunks if c.choices]
    thought = "".join(d.get(key) or "" for d in deltas)
    assert thought == "The user wrote: Hello. I will answer plainly."
    first_answer = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all(not d.get(key) for d in deltas[first_answer:])  # reasoning comes first, all of it
    assert "".join(d.get("content") or "" for d in deltas) == "You said: Hello"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 8
    assert usage.completion_tokens == 8 + 3


def test_refuse_streams_a_refusal_instead_of_content(client: OpenAI) -> None:
    chunks = _stream_chunks(client, [_user("Tell me a secret [refuse]")])
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.refusal or "" for d in deltas) == "I'm sorry, but I can't help with that."
    assert not any(d.content for d in deltas)
    whole = client.chat.completions.create(model="m", messages=[_user("Tell me a secret [refuse]")])
    assert whole.choices[0].message.refusal == "I'm sorry, but I can't help with that."
    assert whole.choices[0].message.content is None


def test_name_memory_needs_the_history(client: OpenAI) -> None:
    history: list[ChatCompletionMessageParam] = [
        _user("My name is Ravi."),
        {"role": "assistant", "content": "Nice to meet you, Ravi."},
        _user("What is my name?"),
    ]
    first = client.chat.completions.create(model="m", messages=history[:1])
    assert first.choices[0].message.content == "Nice to meet you, Ravi."
    remembered = client.chat.completions.create(model="m", messages=history)
    assert remembered.choices[0].message.content == "Your name is Ravi."
    fresh = client.chat.completions.create(model="m", messages=[_user("What is my name?")])
    assert fresh.choices[0].message.content == "I don't know your name yet."


def test_streamed_weather_call_arrives_in_fragments(client: OpenAI) -> None:
    chunks = _stream_chunks(client, [_user("What is the weather in Bengaluru?")], tools=[WEATHER])
    calls, fragments = _assemble_calls(chunks)
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["arguments"] == '{"city": "Bengaluru"}'
    assert calls[0]["id"].startswith("call_")
    assert fragments[0] > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content is None
    assert _finish_reason(chunks) == "tool_calls"


def test_two_parallel_weather_calls(client: OpenAI) -> None:
    chunks = _stream_chunks(client, [_user("What's the weather in Paris and Tokyo?")], tools=[WEATHER])
    calls, _ = _assemble_calls(chunks)
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert calls[0]["id"] != calls[1]["id"]
    assert _finish_reason(chunks) == "tool_calls"


def _after_results(results: list[tuple[str, str, str]], question: str) -> list[ChatCompletionMessageParam]:
    """The user's question, the assistant's tool calls, then one tool message per (name, args, content)."""
    calls: list[ChatCompletionMessageFunctionToolCallParam] = [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
        for i, (name, args, _) in enumerate(results)
    ]
    tool_messages: list[ChatCompletionToolMessageParam] = [
        {"role": "tool", "tool_call_id": f"call_{i}", "content": content}
        for i, (_, _, content) in enumerate(results)
    ]
    return [_user(question), {"role": "assistant", "content": None, "tool_calls": calls}, *tool_messages]


def _function_calls(completion: ChatCompletion) -> list[tuple[str, str]]:
    calls = completion.choices[0].message.tool_calls or []
    return [(c.function.name, c.function.arguments) for c in calls if isinstance(c, FunctionToolCall)]


def test_answer_after_tool_results(client: OpenAI) -> None:
    messages = _after_results(
        [
            ("get_weather", '{"city": "Paris"}', "sunny, 21°C"),
            ("get_weather", '{"city": "Tokyo"}', "rainy, 14°C"),
        ],
        "What's the weather in Paris and Tokyo?",
    )
    chunks = _stream_chunks(client, messages, tools=[WEATHER])
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "The weather in Paris is sunny, 21°C. The weather in Tokyo is rainy, 14°C."
    assert _finish_reason(chunks) == "stop"


def test_error_result_is_recovered_in_text(client: OpenAI) -> None:
    messages = _after_results(
        [("get_weather", '{"city": "Oslo"}', '{"error": "weather service timed out"}')],
        "What is the weather in Oslo?",
    )
    reply = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content == (
        "The tool get_weather failed (weather service timed out), so I cannot answer that exactly."
    )


def test_forever_requests_the_call_again_after_results(client: OpenAI) -> None:
    question = 'call slow_tool({"seconds": 1}) forever'
    first = client.chat.completions.create(model="m", messages=[_user(question)], tools=[SLOW])
    assert first.choices[0].finish_reason == "tool_calls"
    assert _function_calls(first) == [("slow_tool", '{"seconds": 1}')]
    messages = _after_results([("slow_tool", '{"seconds": 1}', "done")], question)
    again = client.chat.completions.create(model="m", messages=messages, tools=[SLOW])
    assert again.choices[0].finish_reason == "tool_calls"
    assert _function_calls(again) == [("slow_tool", '{"seconds": 1}')]
    once = _after_results([("slow_tool", '{"seconds": 1}', "done")], 'call slow_tool({"seconds": 1})')
    answered = client.chat.completions.create(model="m", messages=once, tools=[SLOW])
    assert answered.choices[0].message.content == "Tool slow_tool returned: done."


def test_max_tokens_cuts_with_length(client: OpenAI) -> None:
    chunks = _stream_chunks(client, [_user("count to 100")], max_tokens=5)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.split() == ["1", "2", "3", "4", "5"]
    assert _finish_reason(chunks) == "length"
    whole = client.chat.completions.create(
        model="m", messages=[_user("count to 100")], max_completion_tokens=3
    )
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 3


def test_fail_directive_is_a_server_error(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=[_user("hi [fail]")], stream=True)
    assert caught.value.status_code == 500
    assert caught.value.body == {
        "message": "mock upstream failure",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_fail_midstream_breaks_the_stream(client: OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
            model="m", messages=[_user("count to 50 [fail-midstream]")], stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received).startswith("1 2 ")


def test_models_lists_the_mock(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["turnstream-mock"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"model": "m"}',
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "messages": "hi"}',
        b'{"model": "m", "messages": [{"role": "robot", "content": "hi"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": 5}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}',
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"x": 1}]}',
    ],
)
def test_bad_bodies_get_400(mock_server: _Server, body: bytes) -> None:
    response = httpx.post(
        f"{mock_server.base_url}/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_client_disconnect_stops_generation(mock_server: _Server, client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=[_user("count to 2000 [delay=20ms]")], stream=True
    )
    for seen, _ in enumerate(stream):
        if seen == 3:
            break
    assert mock_server.app.state.active_streams == 1
    stream.close()
    deadline = time.monotonic() + 5
    while mock_server.app.state.active_streams:
        assert time.monotonic() < deadline, "the stream kept producing after the client left"
        time.sleep(0.02)


# --- the brain on its own ------------------------------------------------------------------------


def _ids() -> Any:
    numbers = count()
    return lambda: f"call_{next(numbers)}"


def test_brain_text_rules() -> None:
    assert decide([_user("count to 5")]).text == "1 2 3 4 5"
    assert decide([_user("")]).text == "Hello! How can I help?"
    assert decide([{"role": "system", "content": "be nice"}]).text == "Hello! How can I help?"
    parts = {"role": "user", "content": [{"type": "text", "text": "My name is Ravi Kumar."}]}
    assert decide([parts]).text == "Nice to meet you, Ravi Kumar."
    assert decide([_user("What is the weather in Pune?")]).text == (
        "Sorry, I can't check the weather: I have no weather tool."
    )
    assert decide([_user("hello [delay=50ms]")]).text == "You said: hello"
    assert decide([_user("call nope({})")], [WEATHER]).text == "I have no tool named nope."


def test_brain_tool_rules() -> None:
    reply = decide([_user("What time is it?")], [TIME], _ids())
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [("call_0", "get_time", "{}")]
    zoned = decide([_user("What time is it in Asia/Kolkata?")], [TIME], _ids())
    assert zoned.tool_calls[0].arguments == '{"timezone": "Asia/Kolkata"}'
    explicit = decide([_user('call slow_tool({"seconds": 1}) then call get_time()')], [SLOW, TIME], _ids())
    assert [(c.name, c.arguments) for c in explicit.tool_calls] == [
        ("slow_tool", '{"seconds": 1}'),
        ("get_time", "{}"),
    ]
    cities = decide([_user("weather in New York, Paris and Tokyo")], [WEATHER], _ids())
    assert [json.loads(c.arguments)["city"] for c in cities.tool_calls] == ["New York", "Paris", "Tokyo"]


def test_brain_directives_and_tokens() -> None:
    directives = parse_directives([_user("slow please [delay=50ms] [fail-midstream]")])
    assert directives.delay_ms == 50.0 and directives.fail_midstream and not directives.fail
    text = "  one two\nthree  four "
    assert "".join(tokenize(text)) == text and len(tokenize(text)) == 4


def test_continuation_with_an_instruction_answers_only_the_rest() -> None:
    messages = [
        {"role": "user", "content": "count to 6"},
        {"role": "assistant", "content": "1 2 3"},
        {"role": "system", "content": "Continue exactly from where you stopped."},
    ]

    assert decide(messages).text == " 4 5 6"


def test_continuation_with_continue_final_message_answers_only_the_rest() -> None:
    messages = [{"role": "user", "content": "count to 6"}, {"role": "assistant", "content": "1 2 3 4"}]

    assert decide(messages, continue_final_message=True).text == " 5 6"


def test_continuation_of_a_finished_answer_adds_nothing() -> None:
    messages = [{"role": "user", "content": "count to 3"}, {"role": "assistant", "content": "1 2 3"}]

    assert decide(messages, continue_final_message=True).text is None


def test_tool_choice_and_parallel_calls_are_honoured(client: OpenAI) -> None:
    ask = [_user("weather in Paris and Tokyo")]

    def calls(**kwargs: Any) -> list[str]:
        message = client.chat.completions.create(model="m", messages=ask, tools=[WEATHER, TIME], **kwargs)
        return [c.function.name for c in message.choices[0].message.tool_calls or []]  # type: ignore[union-attr]

    assert calls() == ["get_weather", "get_weather"]
    assert calls(parallel_tool_calls=False) == ["get_weather"]
    assert calls(tool_choice="none") == []
    assert calls(tool_choice={"type": "function", "function": {"name": "get_time"}}) == ["get_time"]
    hello = client.chat.completions.create(
        model="m", messages=[_user("hello")], tools=[TIME], tool_choice="required"
    )
    assert [c.function.name for c in hello.choices[0].message.tool_calls or []] == ["get_time"]  # type: ignore[union-attr]


def test_response_formats_shape_the_text(client: OpenAI) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "tags": {"type": "array",
              "items": {"enum": ["a", "b"]}}, "note": {"type": ["string", "null"]}}}
    shaped = client.chat.completions.create(
        model="m", messages=[_user("count to 3")],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    assert json.loads(shaped.choices[0].message.content or "") == {"n": 3, "tags": ["a"], "note": "1 2 3"}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[_user("hi")], response_format={"type": "yaml"})  # type: ignore[typeddict-item]


def test_images_and_files_are_described_and_the_echo_directive_returns_the_body(client: OpenAI) -> None:
    parts: list[Any] = [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAEC", "detail": "low"}},
        {"type": "file", "file": {"filename": "a.txt", "file_data": "aGk="}},
    ]
    seen = client.chat.completions.create(model="m", messages=[{"role": "user", "content": parts}])
    assert seen.choices[0].message.content == (
        "I see 1 image (image/jpeg, 3 bytes, detail low) and 1 file (a.txt, 2 bytes)."
    )
    echoed = client.chat.completions.create(model="m", messages=[_user("[echo-request]")], user="u")
    assert json.loads(echoed.choices[0].message.content or "")["user"] == "u"


def test_fail_cues_answer_the_first_requests_with_the_status_and_retry_after(client: OpenAI) -> None:
    messages = [_user("hello [fail=429x2][retry-after=1][retry-after-ms=250] fail-cue")]
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=messages)
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.response.headers["retry-after-ms"] == "250"
        assert caught.value.code == "rate_limit_exceeded"
    # The third request carrying the same message is answered, and the cues are not part of the answer.
    answer = client.chat.completions.create(model="m", messages=messages)
    assert answer.choices[0].message.content == "You said: hello fail-cue"


def test_a_cut_cue_breaks_the_stream_after_that_many_words_once(client: OpenAI) -> None:
    messages = [_user("count to 30 [cut-after=10] cut-cue")]
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="m", messages=messages, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received).split() == [str(i) for i in range(1, 11)]
    whole = _stream_chunks(client, messages)
    assert "".join(c.choices[0].delta.content or "" for c in whole if c.choices).split()[-1] == "30"


def test_a_silent_cue_sends_headers_and_then_nothing(mock_server: _Server) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi [silent] silent-cue"}]}
    url = f"{mock_server.base_url}/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=httpx.Timeout(10, read=0.5)) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            next(response.iter_raw())  # nothing within the client's read timeout
            pytest.fail("the silent request sent a byte")
    again = httpx.post(f"{mock_server.base_url}/chat/completions", json={**body, "stream": False}, timeout=10)
    assert again.json()["choices"][0]["message"]["content"] == "You said: hi silent-cue"


def test_a_no_continue_cue_refuses_only_continuations(client: OpenAI) -> None:
    asked = _user("count to 5 [no-continue] refuse-cue")
    assert client.chat.completions.create(model="m", messages=[asked]).choices[0].message.content == "1 2 3 4 5"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="m",
            messages=[asked, {"role": "assistant", "content": "1 2 "}, {"role": "system", "content": "Go on."}],
        )
