from __future__ import annotations

from typing import Any

import pytest
from openai.types.conversations import ConversationItem, Message
from openai.types.responses import FunctionTool
from pydantic import TypeAdapter, ValidationError

from api.errors import APIError
from api.schemas import CreateResponseBody, function_tools, normalise_input

CONVERSATION_ITEM = TypeAdapter(ConversationItem)


def rejected(value: Any, param: str = "input") -> APIError:
    with pytest.raises(APIError) as raised:
        normalise_input(value, param)
    assert raised.value.status == 400
    assert raised.value.type == "invalid_request_error"
    return raised.value


# --- normalise_input: accepted forms --------------------------------------------------------------


def test_string_input_becomes_one_user_message() -> None:
    (item,) = normalise_input("Hello")

    assert item["type"] == "message"
    assert item["role"] == "user"
    assert item["status"] == "completed"
    assert item["content"] == [{"type": "input_text", "text": "Hello"}]
    assert item["id"].startswith("msg_")
    assert Message.model_validate(item).content[0].type == "input_text"


def test_messages_with_string_content_keep_their_roles() -> None:
    items = normalise_input(
        [
            {"role": "developer", "content": "rules"},
            {"role": "system", "content": "more rules"},
            {"type": "message", "role": "user", "content": "question"},
        ]
    )

    assert [(i["role"], i["content"]) for i in items] == [
        ("developer", [{"type": "input_text", "text": "rules"}]),
        ("system", [{"type": "input_text", "text": "more rules"}]),
        ("user", [{"type": "input_text", "text": "question"}]),
    ]
    for item in items:
        Message.model_validate(item)


def test_text_parts_of_every_accepted_kind_become_input_text() -> None:
    (item,) = normalise_input(
        [{"role": "user", "content": [
            {"type": "input_text", "text": "a"},
            {"type": "text", "text": "b"},
            {"type": "output_text", "text": "c"},
        ]}]
    )

    assert item["content"] == [
        {"type": "input_text", "text": "a"},
        {"type": "input_text", "text": "b"},
        {"type": "input_text", "text": "c"},
    ]


def test_assistant_messages_get_output_text_parts() -> None:
    (from_string, from_parts) = normalise_input(
        [
            {"role": "assistant", "content": "earlier answer"},
            {"role": "assistant", "content": [{"type": "input_text", "text": "also earlier"}]},
        ]
    )

    assert from_string["content"] == [{"type": "output_text", "text": "earlier answer", "annotations": []}]
    assert from_parts["content"] == [{"type": "output_text", "text": "also earlier", "annotations": []}]
    assert Message.model_validate(from_string).content[0].type == "output_text"


def test_image_parts_keep_url_and_default_detail_to_auto() -> None:
    (item,) = normalise_input(
        [{"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
            {"type": "input_image", "image_url": "https://example.test/a.png", "detail": "low"},
        ]}]
    )

    assert item["content"][1:] == [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
        {"type": "input_image", "image_url": "https://example.test/a.png", "detail": "low"},
    ]
    Message.model_validate(item)


MSG_GIVEN = "msg_" + "ab" * 24
FC_GIVEN = "fc_" + "cd" * 24


def test_supplied_item_ids_are_kept_and_missing_ones_generated() -> None:
    given, generated = normalise_input(
        [{"id": MSG_GIVEN, "role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    )

    assert given["id"] == MSG_GIVEN
    assert generated["id"].startswith("msg_")
    assert generated["id"] != given["id"]


@pytest.mark.parametrize(
    ("item", "bad_id"),
    [
        ({"role": "user", "content": "a"}, "msg_given"),
        ({"role": "user", "content": "a"}, FC_GIVEN),  # another type's prefix
        ({"role": "user", "content": "a"}, MSG_GIVEN.upper().replace("MSG", "msg")),  # upper-case hex
        ({"role": "user", "content": "a"}, MSG_GIVEN + ":items"),
        ({"role": "user", "content": "a"}, ""),
        ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}, MSG_GIVEN),
        ({"type": "function_call_output", "call_id": "c", "output": "x"}, FC_GIVEN),
    ],
)
def test_a_supplied_item_id_of_the_wrong_shape_names_the_id_param(item: dict[str, Any], bad_id: str) -> None:
    error = rejected([{"role": "user", "content": "ok"}, {**item, "id": bad_id}])

    assert error.param == "input[1].id"


def test_function_call_output_item_is_stored_completed() -> None:
    (item,) = normalise_input([{"type": "function_call_output", "call_id": "call_1", "output": '{"ok":true}'}])

    assert item == {
        "id": item["id"],
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"ok":true}',
        "status": "completed",
    }
    assert item["id"].startswith("fco_")
    assert type(CONVERSATION_ITEM.validate_python(item)).__name__ == "ResponseFunctionToolCallOutputItem"


def test_function_call_item_is_stored_completed() -> None:
    (item,) = normalise_input(
        [{"type": "function_call", "id": FC_GIVEN, "call_id": "call_1", "name": "lookup", "arguments": "{}"}]
    )

    assert item == {
        "id": FC_GIVEN,
        "type": "function_call",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": "{}",
        "status": "completed",
    }
    assert type(CONVERSATION_ITEM.validate_python(item)).__name__ == "ResponseFunctionToolCallItem"


def test_item_order_is_preserved() -> None:
    items = normalise_input(
        [
            {"role": "user", "content": "q"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "r"},
            {"role": "assistant", "content": "a"},
        ]
    )

    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output", "message"]


# --- normalise_input: errors ----------------------------------------------------------------------


def test_empty_string_input_is_rejected() -> None:
    assert rejected("").param == "input"


def test_empty_list_input_is_rejected() -> None:
    assert rejected([]).param == "input"


@pytest.mark.parametrize("role", ["tool", "robot", None])
def test_unknown_role_names_the_role_param(role: str | None) -> None:
    error = rejected([{"role": "user", "content": "ok"}, {"role": role, "content": "x"}])

    assert error.param == "input[1].role"


@pytest.mark.parametrize("content", [None, 42, [], {"type": "input_text", "text": "x"}])
def test_content_that_is_neither_text_nor_parts_names_the_content_param(content: Any) -> None:
    assert rejected([{"role": "user", "content": content}]).param == "input[0].content"


def test_content_part_that_is_not_an_object_names_the_part() -> None:
    assert rejected([{"role": "user", "content": ["text"]}]).param == "input[0].content[0]"


def test_text_part_without_text_names_the_text_param() -> None:
    error = rejected([{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text"}]}])

    assert error.param == "input[0].content[1].text"


def test_image_part_without_url_names_the_image_url_param() -> None:
    error = rejected([{"role": "user", "content": [{"type": "input_image", "detail": "low"}]}])

    assert error.param == "input[0].content[0].image_url"


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_image", "file_id": "file_1"}, "file_id"),
        ({"type": "input_image", "image_url": "ftp://example.test/a.png"}, "image_url"),
        ({"type": "input_image", "image_url": "https://example.test/a.png", "detail": "max"}, "detail"),
        ({"type": "input_file", "file_id": "file_1"}, "file_id"),
        ({"type": "input_file", "file_url": "https://example.test/a.pdf"}, "file_url"),
        ({"type": "input_file", "filename": "a.pdf"}, "file_data"),
        ({"type": "input_file", "file_data": "JVBERi0="}, "filename"),
    ],
)
def test_media_parts_that_cannot_reach_the_model_are_rejected_naming_the_field(
    part: dict[str, Any], param: str
) -> None:
    error = rejected([{"role": "user", "content": [part]}])

    assert error.param == f"input[0].content[0].{param}"


def test_file_parts_are_kept_with_their_data_and_name() -> None:
    (item,) = normalise_input(
        [{"role": "user", "content": [{"type": "input_file", "filename": "a.pdf", "file_data": "JVBERi0="}]}]
    )

    assert item["content"] == [{"type": "input_file", "filename": "a.pdf", "file_data": "JVBERi0="}]
    CONVERSATION_ITEM.validate_python(item)


@pytest.mark.parametrize("role", ["system", "developer"])
def test_images_in_system_level_messages_are_rejected(role: str) -> None:
    part = {"type": "input_image", "image_url": "https://example.test/a.png"}
    error = rejected([{"role": role, "content": [{"type": "input_text", "text": "look"}, part]}])

    assert error.param == "input[0].content[1].type"
    assert error.code == "unsupported_value"


@pytest.mark.parametrize(
    ("role", "part"),
    [
        ("user", {"type": "input_audio", "input_audio": {}}),
        ("user", {"type": "input_video", "video_url": "https://example.test/a.mp4"}),
        ("assistant", {"type": "input_image", "image_url": "https://example.test/a.png"}),
        ("assistant", {"type": "refusal", "refusal": "no"}),
    ],
)
def test_unsupported_part_types_are_rejected_naming_the_part_type(role: str, part: dict[str, Any]) -> None:
    error = rejected([{"role": role, "content": [part]}])

    assert error.param == "input[0].content[0].type"
    assert error.code == "unsupported_value"


@pytest.mark.parametrize("kind", ["reasoning", "web_search_call", "item_reference"])
def test_unsupported_item_types_are_rejected_naming_the_item_type(kind: str) -> None:
    error = rejected([{"role": "user", "content": "ok"}, {"type": kind, "id": "x"}])

    assert error.param == "input[1].type"
    assert error.code == "unsupported_value"
    assert kind in error.message


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "function_call_output", "output": "r"}, "input[0].call_id"),
        ({"type": "function_call_output", "call_id": "", "output": "r"}, "input[0].call_id"),
        ({"type": "function_call_output", "call_id": "c", "output": {"ok": True}}, "input[0].output"),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[0].call_id"),
        ({"type": "function_call", "call_id": "c", "arguments": "{}"}, "input[0].name"),
        ({"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}, "input[0].arguments"),
    ],
)
def test_tool_items_missing_fields_name_the_field(item: dict[str, Any], param: str) -> None:
    assert rejected([item]).param == param


def test_errors_are_named_under_the_given_param() -> None:
    error = rejected([{"role": "user", "content": "a"}, {"role": "nobody", "content": "b"}], param="items")

    assert error.param == "items[1].role"


# --- function_tools -------------------------------------------------------------------------------


def test_no_tools_gives_an_empty_list() -> None:
    assert function_tools(None) == []
    assert function_tools([]) == []


def test_function_tools_are_echoed_in_the_response_shape() -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}}

    tools = function_tools(
        [
            {"type": "function", "name": "weather", "description": "Weather now.", "parameters": params,
             "strict": True},
            {"type": "function", "name": "ping"},
        ]
    )

    assert tools == [
        {"type": "function", "name": "weather", "description": "Weather now.", "parameters": params, "strict": True},
        {"type": "function", "name": "ping", "description": None, "parameters": None, "strict": False},
    ]
    assert [FunctionTool.model_validate(tool).name for tool in tools] == ["weather", "ping"]


@pytest.mark.parametrize("kind", ["web_search", "file_search", None])
def test_non_function_tools_are_rejected_naming_the_tool_type(kind: str | None) -> None:
    with pytest.raises(APIError) as raised:
        function_tools([{"type": "function", "name": "ok"}, {"type": kind}])

    assert raised.value.status == 400
    assert raised.value.param == "tools[1].type"
    assert raised.value.code == "unsupported_value"


@pytest.mark.parametrize("name", [None, "", 7])
def test_function_tool_without_a_name_is_rejected(name: Any) -> None:
    with pytest.raises(APIError) as raised:
        function_tools([{"type": "function", "name": name}])

    assert raised.value.status == 400
    assert raised.value.param == "tools[0].name"


@pytest.mark.parametrize("parameters", ["not a schema", ["x"], 3])
def test_function_tool_with_non_object_parameters_names_the_parameters_param(parameters: Any) -> None:
    with pytest.raises(APIError) as raised:
        function_tools([{"type": "function", "name": "f"}, {"type": "function", "name": "g", "parameters": parameters}])

    assert raised.value.status == 400
    assert raised.value.param == "tools[1].parameters"


# --- request body -----------------------------------------------------------------------------------


@pytest.mark.parametrize("conversation", ["conv_1", {"id": "conv_1"}])
def test_conversation_is_accepted_as_id_or_object(conversation: Any) -> None:
    body = CreateResponseBody.model_validate({"input": "hi", "conversation": conversation})

    assert body.conversation_id == "conv_1"


def test_unknown_body_fields_are_rejected() -> None:
    with pytest.raises(ValidationError) as raised:
        CreateResponseBody.model_validate({"input": "hi", "prompt_template": "x"})

    assert raised.value.errors()[0]["type"] == "extra_forbidden"


def test_more_than_sixteen_metadata_pairs_are_rejected() -> None:
    CreateResponseBody.model_validate({"input": "hi", "metadata": {str(i): "v" for i in range(16)}})

    with pytest.raises(ValidationError):
        CreateResponseBody.model_validate({"input": "hi", "metadata": {str(i): "v" for i in range(17)}})
