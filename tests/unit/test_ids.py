from __future__ import annotations

import pytest

from shared import ids


@pytest.mark.parametrize(
    ("make", "prefix"),
    [
        (ids.response_id, ids.RESPONSE),
        (ids.conversation_id, ids.CONVERSATION),
        (ids.message_id, ids.MESSAGE),
        (ids.function_call_id, ids.FUNCTION_CALL),
        (ids.function_call_output_id, ids.FUNCTION_CALL_OUTPUT),
        (ids.call_id, ids.CALL),
    ],
)
def test_every_issued_id_passes_its_own_format_check(make: object, prefix: str) -> None:
    issued = make()  # type: ignore[operator]

    assert ids.is_id(issued, prefix)
    assert issued != make()  # type: ignore[operator]


GOOD = "conv_" + "0123456789abcdef" * 3


@pytest.mark.parametrize(
    "value",
    [
        GOOD + ":items",  # a key of another kind
        GOOD + ":turns",
        GOOD + "\n",
        GOOD[:-1],
        GOOD + "0",
        GOOD.replace("abcdef", "ABCDEF"),
        GOOD.replace("conv_", "resp_"),
        GOOD.replace("conv_", "conv-"),
        "conv_missing",
        "conv_*",
        "",
        None,
        42,
    ],
)
def test_anything_but_the_exact_format_is_refused(value: object) -> None:
    assert ids.is_id(GOOD, ids.CONVERSATION)
    assert not ids.is_id(value, ids.CONVERSATION)


def test_item_ids_are_messages_calls_and_call_outputs() -> None:
    assert ids.is_item_id(ids.message_id())
    assert ids.is_item_id(ids.function_call_id())
    assert ids.is_item_id(ids.function_call_output_id())
    assert not ids.is_item_id(ids.response_id())
    assert not ids.is_item_id(ids.call_id())
    assert not ids.is_item_id(ids.message_id() + ":x")
