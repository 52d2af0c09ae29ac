"""The mapping of a turn's Responses settings onto the upstream Chat Completions request."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import completion_create_params
from pydantic import TypeAdapter

from shared import events
from shared.models import TurnRequest
from worker.agents import Agent
from worker.prompt import chat_tool
from worker.upstream_request import chat_request

AGENT = Agent(name="support", model="gpt-4.1-mini", max_output_tokens=500)
MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [chat_tool({"type": "function", "name": n, "parameters": None}) for n in ("lookup", "refund", "ship")]
# The SDK's own type for a streaming create: a mapped request that it would not accept fails here.
CREATE_PARAMS: TypeAdapter[Any] = TypeAdapter(completion_create_params.CompletionCreateParamsStreaming)


def _request(**settings: Any) -> TurnRequest:
    return TurnRequest(response_id="resp_1", model="support", input=[], **settings)


def _calls(n: int) -> list[dict[str, Any]]:
    return [events.function_call_item(f"fc_{i}", f"call_{i}", "lookup", "{}", "completed") for i in range(n)]


def _kwargs(req: TurnRequest, output: list[dict[str, Any]] | None = None, tools: Any = TOOLS) -> dict[str, Any]:
    kwargs = chat_request(req, AGENT, MESSAGES, tools, output or [])
    CREATE_PARAMS.validate_python(kwargs)
    return kwargs


def test_a_bare_request_sends_only_what_it_must() -> None:
    kwargs = _kwargs(_request(), tools=[])

    assert kwargs == {
        "model": "gpt-4.1-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 500,
    }


def test_settings_pass_through_only_when_set() -> None:
    kwargs = _kwargs(
        _request(
            temperature=0.3, top_p=0.8, presence_penalty=0.5, frequency_penalty=-0.5, user="u1",
            safety_identifier="s1", prompt_cache_key="k1", service_tier="flex", max_output_tokens=64,
            reasoning={"effort": "low", "summary": None}, text={"format": {"type": "text"}, "verbosity": "low"},
        )
    )

    assert {k: kwargs[k] for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty")} == {
        "temperature": 0.3, "top_p": 0.8, "presence_penalty": 0.5, "frequency_penalty": -0.5,
    }
    assert (kwargs["user"], kwargs["safety_identifier"], kwargs["prompt_cache_key"]) == ("u1", "s1", "k1")
    assert (kwargs["service_tier"], kwargs["max_tokens"]) == ("flex", 64)
    assert (kwargs["reasoning_effort"], kwargs["verbosity"]) == ("low", "low")
    assert "response_format" not in kwargs


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True,
             "description": "The answer."},
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True,
                                                    "description": "The answer."}},
        ),
    ],
)
def test_text_format_becomes_response_format(fmt: dict[str, Any], expected: dict[str, Any]) -> None:
    assert _kwargs(_request(text={"format": fmt}))["response_format"] == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", None),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "refund"}, {"type": "function", "function": {"name": "refund"}}),
    ],
)
def test_every_tool_choice_form_on_the_first_round(choice: Any, expected: Any) -> None:
    kwargs = _kwargs(_request(tool_choice=choice))

    assert kwargs.get("tool_choice") == expected
    assert len(kwargs["tools"]) == 3


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "refund"}])
def test_a_forced_call_is_forced_once_then_the_model_may_answer(choice: Any) -> None:
    assert "tool_choice" not in _kwargs(_request(tool_choice=choice), output=_calls(1))


def test_allowed_tools_offers_only_the_allowed_ones_with_its_mode() -> None:
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "ship"}]}
    kwargs = _kwargs(_request(tool_choice=choice))

    assert [t["function"]["name"] for t in kwargs["tools"]] == ["ship"]
    assert kwargs["tool_choice"] == "required"


def test_max_tool_calls_allows_one_call_per_round_then_none() -> None:
    req = _request(max_tool_calls=2)

    first, second, spent = _kwargs(req), _kwargs(req, _calls(1)), _kwargs(req, _calls(2))

    assert first["parallel_tool_calls"] is False and "tool_choice" not in first
    assert second["parallel_tool_calls"] is False and "tool_choice" not in second
    assert spent["tool_choice"] == "none"
    assert len(spent["tools"]) == 3  # still listed: the history holds calls to them
