"""Decides what the mock model says: a pure function of the chat messages and offered tools.

The mock knows only what it is sent, so a test can tell from the reply whether the history arrived.
Everything is deterministic except tool call ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.ids import call_id
from shared.mock import attachments, faults

MAX_COUNT = 5000

_DELAY_RE = re.compile(r"\[delay=(\d+(?:\.\d+)?)ms\]", re.IGNORECASE)
_FAIL_RE = re.compile(r"\[fail\]", re.IGNORECASE)
_FAIL_MIDSTREAM_RE = re.compile(r"\[fail-midstream\]", re.IGNORECASE)
_ECHO_REQUEST_RE = re.compile(r"\[echo-request\]", re.IGNORECASE)
# [think] streams reasoning before the answer as `reasoning_content` (vLLM, DeepSeek, Ollama); [think:reasoning]
# under the `reasoning` key some servers use instead.
_THINK_RE = re.compile(r"\[think(?::(reasoning))?\]", re.IGNORECASE)
_REFUSE_RE = re.compile(r"\[refuse\]", re.IGNORECASE)
REFUSAL = "I'm sorry, but I can't help with that."
_SUMMARIZE_RE = re.compile(r"^summari[sz]e the conversation", re.IGNORECASE)
_CALL_RE = re.compile(r"\bcall\s+([A-Za-z_][\w.-]*)\(")
_FOREVER_RE = re.compile(r"\bforever\b", re.IGNORECASE)
_WEATHER_RE = re.compile(r"\bweather\b", re.IGNORECASE)
_WEATHER_IN_RE = re.compile(r"\bweather\b.*?\bin\s+(?:the\s+)?", re.IGNORECASE | re.DOTALL)
_TIME_ASK_RE = re.compile(r"\bwhat time\b|\btime is it\b|\bthe time in\b|\bcurrent time\b", re.IGNORECASE)
_TIME_IN_RE = re.compile(r"\btime\b(?:\s+is\s+it)?\s+in\s+(?:the\s+)?", re.IGNORECASE)
_ASK_NAME_RE = re.compile(r"\bwhat(?:'s|\s+is)\s+my\s+name\b", re.IGNORECASE)
_TELL_NAME_RE = re.compile(r"\b(?i:my\s+name\s+is)\s+([^\s.,!?;:]+(?:\s+[A-Z][^\s.,!?;:]*)*)")
_COUNT_RE = re.compile(r"\bcount\s+to\s+(\d+)\b", re.IGNORECASE)
# A place is a run of capitalised words ("New York", "Asia/Kolkata"), listed with commas / "and" / "&".
_PLACE = r"[A-Z][\w'/+-]*(?:\s+[A-Z][\w'/+-]*)*"
_PLACE_LIST_RE = re.compile(rf"({_PLACE}(?:\s*(?:,\s*(?:and\s+)?|\s+and\s+|\s*&\s*){_PLACE})*)")
_PLACE_SPLIT_RE = re.compile(r"\s*(?:,\s*(?:and\s+)?|\s+and\s+|\s*&\s*)\s*")
_WORD_RE = re.compile(r"[\w'/+-]+")
_TOKEN_RE = re.compile(r"\s*\S+\s*")


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as the text the model "wrote"


@dataclass(frozen=True)
class Reply:
    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None  # sent as `refusal` instead of content, as OpenAI's models refuse


@dataclass(frozen=True)
class Directives:
    delay_ms: float | None = None
    fail: bool = False
    fail_midstream: bool = False
    echo_request: bool = False  # reply with the request body as JSON, so a test sees what reached the model
    reasoning_key: str | None = None  # the delta key reasoning streams under, when the model is to think first
    refuse: bool = False


def content_text(content: Any) -> str:
    """Text of a message's content, whether a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def tokenize(text: str) -> list[str]:
    """Split into stream tokens (a word plus surrounding whitespace) whose concatenation is `text`."""
    tokens: list[str] = _TOKEN_RE.findall(text)
    if not tokens and text:
        return [text]
    return tokens


def count_tokens(text: str) -> int:
    return len(text.split())


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    total = 0
    for message in messages:
        total += count_tokens(content_text(message.get("content")))
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                total += count_tokens(f"{function.get('name', '')} {function.get('arguments', '')}")
    return total


def parse_directives(messages: Sequence[Mapping[str, Any]]) -> Directives:
    text = _last_user_raw_text(messages)
    delay = _DELAY_RE.search(text)
    return Directives(
        delay_ms=float(delay.group(1)) if delay else None,
        fail=bool(_FAIL_RE.search(text)),
        fail_midstream=bool(_FAIL_MIDSTREAM_RE.search(text)),
        echo_request=bool(_ECHO_REQUEST_RE.search(text)),
        reasoning_key=(think.group(1) or "reasoning_content") if (think := _THINK_RE.search(text)) else None,
        refuse=bool(_REFUSE_RE.search(text)),
    )


def reasoning(messages: Sequence[Mapping[str, Any]]) -> str:
    """What the mock "thinks" before answering: deterministic, and naming what it answers to."""
    if _trailing_tool_results(messages):
        return "The tools have answered, so I can reply from their results."
    asked = _strip_directives(_last_user_raw_text(messages)) or "nothing"
    return f"The user wrote: {asked}. I will answer plainly."


def offered_tool_names(tools: Sequence[Any] | None) -> list[str]:
    names: list[str] = []
    for tool in tools or []:
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function")
        # Responses-format tools carry the name at the top level; accept both shapes.
        name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
        if isinstance(name, str):
            names.append(name)
    return names


def decide(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Any] | None = None,
    new_call_id: Callable[[], str] = call_id,
    continue_final_message: bool = False,
) -> Reply:
    """The reply to `messages`; a request to continue a cut-off answer gets only the rest of that answer.

    A continuation is either vLLM's `continue_final_message` (the last message is the partial answer) or
    a partial answer followed by a system message asking to go on.
    """
    if parse_directives(messages).refuse:
        return Reply(refusal=REFUSAL)
    partial, before = _continuation(messages, continue_final_message)
    if partial is None:
        return _decide(messages, tools, new_call_id)
    reply = _decide(before, tools, new_call_id)
    text = reply.text or ""
    rest = text[len(partial) :] if text.startswith(partial) else text
    return Reply(text=rest or None, tool_calls=reply.tool_calls)


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The last user message as sent, cues included."""
    return _last_user_raw_text(messages)


def is_continuation(messages: Sequence[Mapping[str, Any]], continue_final_message: bool) -> bool:
    """True when the request asks to go on from a cut-off answer."""
    return _continuation(messages, continue_final_message)[0] is not None


def _continuation(
    messages: Sequence[Mapping[str, Any]], continue_final_message: bool
) -> tuple[str | None, Sequence[Mapping[str, Any]]]:
    end = len(messages)
    if not continue_final_message:
        if end < 2 or messages[-1].get("role") != "system":
            return None, messages
        end -= 1
    last = messages[end - 1] if end else {}
    if last.get("role") != "assistant" or last.get("tool_calls"):
        return None, messages
    return content_text(last.get("content")), messages[: end - 1]


def _decide(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Any] | None,
    new_call_id: Callable[[], str],
) -> Reply:
    if messages and messages[0].get("role") == "system" and _SUMMARIZE_RE.search(
        content_text(messages[0].get("content"))
    ):
        return Reply(text=_summary(messages))
    offered = offered_tool_names(tools)
    user_text = _strip_directives(_last_user_raw_text(messages))
    results = _trailing_tool_results(messages)
    if results:
        if _FOREVER_RE.search(user_text):
            again = _explicit_calls(user_text, offered, new_call_id)
            if again is not None and again.tool_calls:
                return again
        return Reply(text=_answer_from_results(results))
    return _answer_user(messages, user_text, offered, new_call_id)


def _answer_user(
    messages: Sequence[Mapping[str, Any]],
    text: str,
    offered: list[str],
    new_call_id: Callable[[], str],
) -> Reply:
    explicit = _explicit_calls(text, offered, new_call_id)
    if explicit is not None:
        return explicit
    seen = attachments.describe(messages)
    if seen is not None:
        return Reply(text=seen)
    if _WEATHER_RE.search(text):
        return _weather(text, offered, new_call_id)
    if _TIME_ASK_RE.search(text):
        return _time(text, offered, new_call_id)
    if _ASK_NAME_RE.search(text):
        name = _remembered_name(messages)
        return Reply(text=f"Your name is {name}." if name else "I don't know your name yet.")
    told = _TELL_NAME_RE.search(text)
    if told:
        return Reply(text=f"Nice to meet you, {told.group(1)}.")
    count = _COUNT_RE.search(text)
    if count:
        n = int(count.group(1))
        if 1 <= n <= MAX_COUNT:
            return Reply(text=" ".join(str(i) for i in range(1, n + 1)))
        return Reply(text=f"I can only count from 1 to {MAX_COUNT}.")
    if not text.strip():
        return Reply(text="Hello! How can I help?")
    return Reply(text=f"You said: {text.strip()}")


def _explicit_calls(text: str, offered: list[str], new_call_id: Callable[[], str]) -> Reply | None:
    """`call NAME(JSON)` occurrences, in order; None when the message holds none."""
    decoder = json.JSONDecoder()
    found: list[tuple[str, str]] = []
    for match in _CALL_RE.finditer(text):
        start = match.end()
        rest = text[start:].lstrip()
        if rest.startswith(")"):
            found.append((match.group(1), "{}"))
            continue
        offset = len(text) - len(rest)
        try:
            value, end = decoder.raw_decode(text, offset)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and text[end:].lstrip().startswith(")"):
            found.append((match.group(1), text[offset:end]))
    if not found:
        return None
    for name, _ in found:
        if name not in offered:
            return Reply(text=f"I have no tool named {name}.")
    return Reply(tool_calls=tuple(ToolCall(new_call_id(), name, args) for name, args in found))


def _places_after(text: str, pattern: re.Pattern[str]) -> list[str]:
    intro = pattern.search(text)
    if not intro:
        return []
    rest = text[intro.end() :]
    listed = _PLACE_LIST_RE.match(rest)
    if listed:
        return [p for p in _PLACE_SPLIT_RE.split(listed.group(1)) if p]
    # Lower-case place names still count, one word at most: there is no capital to end the name.
    word = _WORD_RE.match(rest)
    return [word.group(0)] if word else []


def _weather(text: str, offered: list[str], new_call_id: Callable[[], str]) -> Reply:
    if "get_weather" not in offered:
        return Reply(text="Sorry, I can't check the weather: I have no weather tool.")
    cities = _places_after(text, _WEATHER_IN_RE)
    if not cities:
        return Reply(text="Which city would you like the weather for?")
    return Reply(
        tool_calls=tuple(
            ToolCall(new_call_id(), "get_weather", json.dumps({"city": city})) for city in cities
        )
    )


def _time(text: str, offered: list[str], new_call_id: Callable[[], str]) -> Reply:
    if "get_time" not in offered:
        return Reply(text="Sorry, I can't check the time: I have no clock tool.")
    zones = _places_after(text, _TIME_IN_RE)
    arguments = json.dumps({"timezone": zones[0]}) if zones else "{}"
    return Reply(tool_calls=(ToolCall(new_call_id(), "get_time", arguments),))


def _remembered_name(messages: Sequence[Mapping[str, Any]]) -> str | None:
    # Told in an earlier user message, or carried by a summary of them (a system message).
    earlier = [m for m in messages if m.get("role") in ("user", "system")]
    if earlier and earlier[-1].get("role") == "user":
        earlier = earlier[:-1]
    for message in reversed(earlier):
        told = _TELL_NAME_RE.search(content_text(message.get("content")))
        if told:
            return told.group(1)
    return None


def _summary(messages: Sequence[Mapping[str, Any]]) -> str:
    """What a summarising model keeps: every "my name is" the user said, directly or in an earlier summary."""
    said: list[str] = []
    for message in messages[1:]:
        if message.get("role") in ("user", "system"):
            for told in _TELL_NAME_RE.finditer(content_text(message.get("content"))):
                statement = f"My name is {told.group(1)}."
                if statement not in said:
                    said.append(statement)
    return "The user said: " + " ".join(said) if said else "Nothing worth keeping was said."


@dataclass(frozen=True)
class _Result:
    name: str
    arguments: str
    content: str


def _trailing_tool_results(messages: Sequence[Mapping[str, Any]]) -> list[_Result]:
    tail: list[Mapping[str, Any]] = []
    index = len(messages) - 1
    while index >= 0 and messages[index].get("role") == "tool":
        tail.append(messages[index])
        index -= 1
    if not tail:
        return []
    calls: dict[str, tuple[str, str]] = {}
    if index >= 0 and messages[index].get("role") == "assistant":
        for call in messages[index].get("tool_calls") or []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                calls[str(call.get("id"))] = (str(function.get("name")), str(function.get("arguments", "")))
    results: list[_Result] = []
    for message in reversed(tail):
        fallback = (str(message.get("name") or "unknown"), "")
        name, arguments = calls.get(str(message.get("tool_call_id")), fallback)
        results.append(_Result(name, arguments, content_text(message.get("content")).strip()))
    return results


def _answer_from_results(results: list[_Result]) -> str:
    return " ".join(_sentence(result) for result in results)


def _sentence(result: _Result) -> str:
    error = _error_message(result.content)
    if error is not None:
        return f"The tool {result.name} failed ({error}), so I cannot answer that exactly."
    if result.name == "get_weather":
        city = _json_object(result.arguments).get("city")
        if isinstance(city, str):
            return f"The weather in {city} is {result.content}."
    return f"Tool {result.name} returned: {result.content}."


def _error_message(content: str) -> str | None:
    parsed = _json_object(content)
    if "error" not in parsed:
        return None
    error = parsed["error"]
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) else json.dumps(error)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _last_user_raw_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _strip_directives(text: str) -> str:
    for pattern in (_DELAY_RE, _FAIL_MIDSTREAM_RE, _FAIL_RE, _ECHO_REQUEST_RE, _THINK_RE, _REFUSE_RE, *faults.PATTERNS):
        text = pattern.sub("", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()
