"""Richer input through the SDK and raw HTTP: images, files, system-level messages, every tool_choice form,
structured output, reasoning effort, max_tool_calls and the pass-through settings, as the upstream sees them.

The mock model answers image and file parts by describing what arrived, and `[echo-request]` makes it
reply with the Chat Completions request body it received, so each mapping is checked at the far end.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openai import OpenAI

from tests.conftest import Stack
from tests.integration.test_conformance import PIXEL
from tests.openresponses_spec import Conformance

M = "turnstream-mock"
LOOKUP_ORDER = {"type": "function", "name": "lookup_order", "parameters": {"type": "object", "properties": {}}}
PDF = base64.b64encode(b"%PDF-1.4 a tiny document").decode()


def _upstream_request(client: OpenAI, **body: Any) -> dict[str, Any]:
    """The Chat Completions body the upstream received for the turn's first round."""
    given = body.pop("input", "hello")
    echo = {"role": "user", "content": "[echo-request]"}
    ask = [*given, echo] if isinstance(given, list) else f"{given} [echo-request]"
    # Settings the SDK's create() has no argument for go in the body as they are, like any raw client sends.
    extra = {k: body.pop(k) for k in ("presence_penalty", "frequency_penalty") if k in body}
    response = client.responses.create(model=M, input=ask, extra_body=extra or None, **body)
    assert response.status == "completed", response.error
    received: dict[str, Any] = json.loads(response.output_text)
    return received


def _user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def test_an_image_reaches_the_model_with_its_detail(client: OpenAI) -> None:
    response = client.responses.create(
        model=M,
        input=_user(
            {"type": "input_text", "text": "What is in this picture?"},
            {"type": "input_image", "image_url": PIXEL, "detail": "high"},
            {"type": "input_image", "image_url": "https://example.test/cat.png"},
        ),
    )
    assert response.output_text == (
        "I see 2 images (image/png, 71 bytes, detail high; https://example.test/cat.png, detail auto)."
    )


def test_a_file_reaches_the_model_inline(client: OpenAI) -> None:
    response = client.responses.create(
        model=M,
        input=_user(
            {"type": "input_text", "text": "Summarise this."},
            {"type": "input_file", "filename": "notes.pdf", "file_data": f"data:application/pdf;base64,{PDF}"},
        ),
    )
    assert response.output_text == "I see 1 file (notes.pdf, application/pdf, 24 bytes)."


def test_system_and_developer_messages_go_upstream_as_system_messages(client: OpenAI) -> None:
    sent = _upstream_request(
        client,
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use metric units."},
            {"role": "system", "content": [{"type": "input_text", "text": "Never guess."}]},
            {"role": "user", "content": "hi"},
        ],
    )
    roles = [(m["role"], m["content"]) for m in sent["messages"]]
    assert roles[0] == ("system", "You are a helpful assistant.\n\nBe brief.")
    assert roles[1:3] == [("system", "Use metric units."), ("system", "Never guess.")]
    assert roles[3][0] == "user"


def test_settings_pass_through_to_the_upstream(client: OpenAI) -> None:
    sent = _upstream_request(
        client,
        temperature=0.4,
        top_p=0.7,
        presence_penalty=0.25,
        frequency_penalty=0.5,
        reasoning={"effort": "low"},
        text={"verbosity": "high"},
        user="user-1",
        safety_identifier="hashed-user-1",
        prompt_cache_key="support-v2",
        service_tier="flex",
        max_output_tokens=400,
        include=["message.input_image.image_url", "reasoning.encrypted_content"],
    )
    assert {k: sent[k] for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty")} == {
        "temperature": 0.4, "top_p": 0.7, "presence_penalty": 0.25, "frequency_penalty": 0.5,
    }
    assert (sent["reasoning_effort"], sent["verbosity"], sent["max_tokens"]) == ("low", "high", 400)
    assert (sent["user"], sent["safety_identifier"], sent["prompt_cache_key"], sent["service_tier"]) == (
        "user-1", "hashed-user-1", "support-v2", "flex",
    )


def test_tool_choice_none_keeps_the_model_from_calling_tools(client: OpenAI) -> None:
    response = client.responses.create(model=M, input="What is the weather in Bengaluru?", tool_choice="none")
    assert [o.type for o in response.output] == ["message"]
    assert response.output_text == "Sorry, I can't check the weather: I have no weather tool."
    assert response.tool_choice == "none"


def test_tool_choice_required_makes_the_model_call_a_tool(client: OpenAI) -> None:
    response = client.responses.create(model="plain", input="hello", tools=[LOOKUP_ORDER], tool_choice="required")
    assert [(o.type, getattr(o, "name", None)) for o in response.output] == [("function_call", "lookup_order")]


def test_tool_choice_naming_a_function_calls_that_function_then_answers(client: OpenAI) -> None:
    response = client.responses.create(
        model=M, input="What is the weather in Bengaluru?", tool_choice={"type": "function", "name": "get_time"}
    )
    assert [o.type for o in response.output] == ["function_call", "function_call_output", "message"]
    assert response.output[0].name == "get_time"  # type: ignore[union-attr]
    assert response.output_text.startswith("Tool get_time returned")


def test_allowed_tools_hides_every_other_tool(client: OpenAI) -> None:
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_time"}]}
    sent = _upstream_request(client, input="hello", tool_choice=choice)
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_time"]
    response = client.responses.create(model=M, input="What is the weather in Bengaluru?", tool_choice=choice)  # type: ignore[arg-type]
    assert response.output_text == "Sorry, I can't check the weather: I have no weather tool."
    assert response.tool_choice.type == "allowed_tools"  # type: ignore[union-attr]


def test_a_json_schema_format_gives_output_valid_against_the_schema(stack: Stack) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}, "sunny": {"type": "boolean"}},
        "required": ["city", "celsius", "sunny"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}
    reply = httpx.post(
        f"{stack.base_url}/responses", json={"model": M, "input": "My name is Ravi.", "text": {"format": fmt}}
    )
    response = reply.json()
    Conformance().response(response)
    assert response["text"]["format"] == {**fmt, "description": None}
    Draft202012Validator(schema).validate(json.loads(response["output"][0]["content"][0]["text"]))


def test_a_json_object_format_gives_a_json_object(client: OpenAI) -> None:
    response = client.responses.create(model=M, input="count to 3", text={"format": {"type": "json_object"}})
    assert json.loads(response.output_text) == {"answer": "1 2 3"}


def test_max_tool_calls_caps_calls_across_rounds(client: OpenAI) -> None:
    ask = 'call echo_tool({"text": "again"}) forever'
    uncapped = client.responses.create(model=M, input=ask)
    capped = client.responses.create(model=M, input=ask, max_tool_calls=2)
    assert uncapped.status == "incomplete"  # the agent's round limit stopped it, not the cap
    assert [o.type for o in capped.output].count("function_call") == 2
    assert capped.status == "completed" and capped.max_tool_calls == 2
    assert capped.output_text == "Tool echo_tool returned: again."


REJECTED: list[tuple[str, dict[str, Any], str]] = [
    ("logprobs are not carried", {"top_logprobs": 5}, "top_logprobs"),
    ("logprobs include", {"include": ["message.output_text.logprobs"]}, "include[0]"),
    ("unknown include", {"include": ["everything"]}, "include[0]"),
    ("reasoning summaries", {"reasoning": {"effort": "low", "summary": "detailed"}}, "reasoning.summary"),
    ("bad effort", {"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ("unknown text format", {"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ("schema without name", {"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ("unknown tool named", {"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
    (
        "unknown allowed tool",
        {"tool_choice": {"type": "allowed_tools", "tools": [{"type": "function", "name": "nope"}]}},
        "tool_choice.tools",
    ),
    ("hosted tool choice", {"tool_choice": {"type": "web_search"}}, "tool_choice.type"),
    ("bad tool name", {"tools": [{"type": "function", "name": "has space"}]}, "tools[0].name"),
    ("file by url", {"input": _user({"type": "input_file", "file_url": "https://x.test/a.pdf"})},
     "input[0].content[0].file_url"),
    ("image by file id", {"input": _user({"type": "input_image", "file_id": "file_1"})},
     "input[0].content[0].file_id"),
    ("foreign compaction item", {"input": [{"type": "compaction", "encrypted_content": "gAAAAB-opaque"}]},
     "input[0].encrypted_content"),
    ("unknown context management", {"context_management": [{"type": "forget_everything"}]},
     "context_management[0].type"),
    ("penalty range", {"presence_penalty": 3}, "presence_penalty"),
    ("max_tool_calls zero", {"max_tool_calls": 0}, "max_tool_calls"),
    ("bad truncation", {"truncation": "sometimes"}, "truncation"),
]


@pytest.mark.parametrize(("name", "extra", "param"), REJECTED, ids=[r[0] for r in REJECTED])
def test_what_cannot_be_honoured_is_a_400_naming_the_param(
    stack: Stack, name: str, extra: dict[str, Any], param: str
) -> None:
    reply = httpx.post(f"{stack.base_url}/responses", json={"model": M, "input": "hi", **extra})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_tool_choice_required_without_any_tool_is_a_400(stack: Stack) -> None:
    reply = httpx.post(f"{stack.base_url}/responses", json={"model": "plain", "input": "hi", "tool_choice": "required"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "tool_choice"
