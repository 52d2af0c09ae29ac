"""Request bodies are decoded as standard JSON only, with a depth limit, and never by recursion."""

from __future__ import annotations

import pytest

from api.errors import APIError
from api.json_body import decode


def refused(raw: bytes, max_depth: int = 64) -> APIError:
    with pytest.raises(APIError) as raised:
        decode(raw, max_depth)
    assert raised.value.status == 400
    assert raised.value.code == "invalid_json"
    assert raised.value.param is None
    return raised.value


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


def test_nesting_up_to_the_limit_is_accepted() -> None:
    value = decode(nested(64), 64)

    for _ in range(63):
        (value,) = value
    assert value == []


@pytest.mark.parametrize(
    "raw",
    [
        nested(65),
        b'{"a":' * 65 + b"1" + b"}" * 65,
        b"[" * 100_000,  # never closed: still a depth error, not a RecursionError
        nested(100_000),
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b'{"tools": [' + nested(70, b'{"x":', b"}").replace(b'{"x":}', b'{"x":1}') + b"]}",
    ],
    ids=["65 arrays", "65 objects", "100k unclosed", "100k arrays", "5k objects", "deep inside a field"],
)
def test_nesting_past_the_limit_is_a_400_naming_the_limit(raw: bytes) -> None:
    assert "deeper than 64 levels" in refused(raw).message


def test_the_limit_is_a_setting() -> None:
    assert decode(nested(3), 3) == [[[]]]
    assert "deeper than 3 levels" in refused(nested(4), 3).message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"tools": [{"parameters": {"maximum": NaN}}]}',
        b'{"tools": [{"parameters": {"maximum": Infinity}}]}',
        b'{"tools": [{"parameters": {"maximum": -Infinity}}]}',
        b'{"temperature": NaN}',
    ],
)
def test_nan_and_infinity_are_refused_by_name(raw: bytes) -> None:
    assert "NaN, Infinity and -Infinity are not JSON numbers" in refused(raw).message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"input": "\\ud800"}',  # escaped lone high surrogate
        b'{"input": "\\udc00 then text"}',  # escaped lone low surrogate
    ],
)
def test_lone_surrogates_are_refused_by_name(raw: bytes) -> None:
    assert "lone surrogate" in refused(raw).message


@pytest.mark.parametrize("raw", [b'{"input": "\xed\xa0\x80"}', b'{"input": "\xff"}'])
def test_bytes_that_are_not_utf8_are_refused_by_name(raw: bytes) -> None:
    assert "must be UTF-8" in refused(raw).message


def test_a_surrogate_pair_is_one_character() -> None:
    assert decode(b'{"input": "\\ud83d\\ude00"}', 64) == {"input": "\U0001f600"}


@pytest.mark.parametrize(
    "raw",
    [b'{"input": "x",}', b"{'input': 'x'}", b'{"input": "x"} trailing', b"\xef\xbb\xbf{}", b'{"a": 1e400}'],
)
def test_other_non_standard_json_is_refused(raw: bytes) -> None:
    assert refused(raw).message.startswith("The request body is not valid JSON")
