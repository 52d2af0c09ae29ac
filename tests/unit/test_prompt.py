from __future__ import annotations

from typing import Any

from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import TypeAdapter

from shared import events
from worker.prompt import chat_tool, to_messages, window

MESSAGES = TypeAdapter(list[ChatCompletionMessageParam])


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return events.message_item(f"msg_{text}", text, "completed")


def call(call_id: str, name: str = "lookup", arguments: str = "{}") -> dict[str, Any]:
    return events.function_call_item(f"fc_{call_id}", call_id, name, arguments, "completed")


def result(call_id: str, output: str = "ok") -> dict[str, Any]:
    return events.function_call_output_item(f"fco_{call_id}", call_id, output, "completed")


# --- window -------------------------------------------------------------------------------------


def test_window_keeps_the_most_recent_items() -> None:
    items = [user(str(i)) for i in range(5)]

    assert window(items, 3) == items[2:]
    assert window(items, 10) == items


def test_window_of_zero_or_less_is_empty() -> None:
    items = [user("a"), user("b")]

    assert window(items, 0) == []
    assert window(items, -1) == []


def test_window_never_starts_on_a_function_call_output() -> None:
    items = [user("q"), call("c1"), result("c1"), result("c1b"), assistant("a")]

    cut = window(items, 3)

    assert cut == [assistant("a")]


def test_window_keeps_a_call_with_its_result_when_both_fit() -> None:
    items = [user("q"), call("c1"), result("c1"), assistant("a")]

    assert window(items, 3) == [call("c1"), result("c1"), assistant("a")]


def test_window_of_only_tool_results_is_empty() -> None:
    assert window([result("c1"), result("c2")], 2) == []


def test_window_drops_a_tool_result_whose_parallel_call_was_cut_off() -> None:
    items = [user("q"), call("c1"), call("c2"), result("c1"), result("c2")]

    assert window(items, 3) == [call("c2"), result("c2")]


def test_windowed_history_with_a_cut_parallel_call_makes_valid_chat_messages() -> None:
    items = [user("q"), call("c1"), call("c2"), call("c3"), result("c1"), result("c2"), result("c3"), assistant("ok")]

    messages = to_messages("", window(items, 6))

    tool_calls = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert tool_calls == answered == ["c2", "c3"]
    MESSAGES.validate_python(messages)


# --- to_messages --------------------------------------------------------------------------------


def test_instructions_come_first_as_a_system_message() -> None:
    messages = to_messages("Be brief.", [user("hi")])

    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def test_empty_instructions_add_no_system_message() -> None:
    assert to_messages("", [user("hi")]) == [{"role": "user", "content": "hi"}]


def test_developer_and_system_items_become_system_messages() -> None:
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev rules"}]},
        {"type": "message", "role": "system", "content": "sys rules"},
    ]

    assert to_messages("top", items) == [
        {"role": "system", "content": "top"},
        {"role": "system", "content": "dev rules"},
        {"role": "system", "content": "sys rules"},
    ]


def test_message_without_type_or_role_is_a_user_message() -> None:
    assert to_messages("", [{"content": "plain"}]) == [{"role": "user", "content": "plain"}]


def test_text_parts_are_joined_into_plain_content() -> None:
    items = [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "one "},
            {"type": "input_text", "text": "two"},
        ]},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "yes, ", "annotations": []},
            {"type": "refusal", "refusal": "but no"},
        ]},
    ]

    assert to_messages("", items) == [
        {"role": "user", "content": "one two"},
        {"role": "assistant", "content": "yes, but no"},
    ]


def test_images_and_files_become_chat_parts_next_to_text_parts() -> None:
    item = {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "what is this?"},
        {"type": "input_image", "image_url": "https://example.test/cat.png", "detail": "low"},
        {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
    ]}

    (message,) = to_messages("", [item])

    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.test/cat.png", "detail": "low"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
        ],
    }
    MESSAGES.validate_python([message])


def test_strict_function_tools_stay_strict_upstream() -> None:
    strict = chat_tool({"type": "function", "name": "f", "parameters": None, "strict": True})
    loose = chat_tool({"type": "function", "name": "g", "parameters": None, "strict": False})

    assert strict["function"]["strict"] is True and "strict" not in loose["function"]


def test_parallel_function_calls_form_one_assistant_message_with_tool_calls() -> None:
    items = [user("weather in two cities"), call("c1", "weather", '{"city":"A"}'), call("c2", "weather", "")]

    messages = to_messages("", items)

    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"A"}'}},
            {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
        ],
    }
    assert len(messages) == 2


def test_function_calls_after_assistant_text_join_that_message() -> None:
    messages = to_messages("", [user("q"), assistant("Let me check."), call("c1")])

    assert messages[1]["role"] == "assistant"
    assert messages[1]["content"] == "Let me check."
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1"]
    assert len(messages) == 2


def test_function_call_output_becomes_a_tool_message() -> None:
    messages = to_messages("", [user("q"), call("c1"), result("c1", '{"temp": 20}')])

    assert messages[-1] == {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 20}'}


def test_sequential_tool_rounds_stay_separate_assistant_messages() -> None:
    items = [user("q"), call("c1"), result("c1"), call("c2"), result("c2"), assistant("done")]

    messages = to_messages("sys", items)

    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1"]
    assert [c["id"] for c in messages[4]["tool_calls"]] == ["c2"]


def test_tool_calls_and_results_make_valid_chat_messages() -> None:
    items = [user("q"), assistant("checking"), call("c1"), call("c2"), result("c1"), result("c2"), assistant("ok")]

    messages = MESSAGES.validate_python(to_messages("sys", items))

    assert len(messages) == 6


# --- chat_tool ----------------------------------------------------------------------------------


def test_chat_tool_wraps_a_responses_function_tool() -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "name": "weather", "description": "Weather now.", "parameters": params}

    converted = chat_tool(tool)

    assert converted == {
        "type": "function",
        "function": {"name": "weather", "description": "Weather now.", "parameters": params},
    }
    TypeAdapter(ChatCompletionToolParam).validate_python(converted)


def test_chat_tool_fills_missing_description_and_parameters() -> None:
    converted = chat_tool({"type": "function", "name": "ping", "description": None, "parameters": None})

    assert converted["function"] == {
        "name": "ping",
        "description": "",
        "parameters": {"type": "object", "properties": {}},
    }


def test_reasoning_items_are_not_sent_back_and_calls_after_them_stay_with_their_message() -> None:
    items = [
        user("Weather?"),
        events.reasoning_item("rs_1", "I should look it up.", "completed"),
        assistant("Let me check."),
        call("c1"),
        result("c1", "14C"),
        events.reasoning_item("rs_2", "Now I can answer.", "completed"),
        events.message_item("msg_r", "I can't help.", "completed", "refusal"),
    ]

    messages = to_messages("", items)

    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["content"] == "Let me check." and len(messages[1]["tool_calls"]) == 1
    assert messages[3]["content"] == "I can't help."  # a refusal goes back as what the assistant said
    MESSAGES.validate_python(messages)


def test_an_answered_approval_shows_as_the_call_and_its_result_and_a_pending_one_not_at_all() -> None:
    request = {"id": "mcpr_1", "type": "mcp_approval_request", "server_label": "a", "name": "send",
               "arguments": '{"to": "x"}'}
    waiting = {"id": "mcpr_2", "type": "mcp_approval_request", "server_label": "a", "name": "send",
               "arguments": "{}"}
    answer = {"id": "mcpa_1", "type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": False}
    run = {"id": "mcp_1", "type": "mcp_call", "server_label": "a", "name": "send", "arguments": '{"to": "x"}',
           "approval_request_id": "mcpr_1", "output": None,
           "error": {"type": "mcp_tool_execution_error", "content": "The user denied this tool call."}}

    messages = to_messages("", [request, waiting, answer, run])

    assert messages == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "mcpr_1", "type": "function", "function": {"name": "send", "arguments": '{"to": "x"}'}}]},
        {"role": "tool", "tool_call_id": "mcpr_1", "content": '{"error": "The user denied this tool call."}'},
    ]
