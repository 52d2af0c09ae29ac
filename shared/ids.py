"""Unguessable ids carrying OpenAI's prefixes, so clients can route on them, and the one check of their format.

Every id the service issues is `<prefix>_` + 48 lowercase hex digits, the same shape OpenAI's own ids have.
An id from a path or a body is checked with `is_id` before it is used in a Redis key: a malformed id then
reads exactly like one that does not exist, and never like a key of another kind (`conv_x:items`).
"""

from __future__ import annotations

import re
import secrets

RESPONSE = "resp"
CONVERSATION = "conv"
MESSAGE = "msg"
FUNCTION_CALL = "fc"
FUNCTION_CALL_OUTPUT = "fco"
CALL = "call"
COMPACTION = "cmp"
REASONING = "rs"
# Tool approvals, as OpenAI names them: the request a turn ends with, the client's answer, the tool's run.
APPROVAL_REQUEST = "mcpr"
APPROVAL_RESPONSE = "mcpa"
TOOL_RUN = "mcp"
ITEM_PREFIXES = (MESSAGE, FUNCTION_CALL, FUNCTION_CALL_OUTPUT, COMPACTION, REASONING, APPROVAL_REQUEST,
                 APPROVAL_RESPONSE, TOOL_RUN)

_RANDOM_BYTES = 24  # 192 bits: unguessable, and the shape clients expect (prefix_ + 48 hex)
_BODY = f"[0-9a-f]{{{_RANDOM_BYTES * 2}}}"
_FORMATS = {
    prefix: re.compile(f"{prefix}_{_BODY}")
    for prefix in (RESPONSE, CONVERSATION, CALL, *ITEM_PREFIXES)
}
_ITEM_FORMAT = re.compile(f"(?:{'|'.join(ITEM_PREFIXES)})_{_BODY}")


def new_id(prefix: str, tag: str = "") -> str:
    """A new id; `tag` (hex digits) starts its random part: the partition it names (shared/partitions.py)."""
    return f"{prefix}_{tag}{secrets.token_hex(_RANDOM_BYTES)[len(tag):]}"


def is_id(value: object, prefix: str) -> bool:
    """True when `value` is exactly an id this service could have issued with `prefix`."""
    return isinstance(value, str) and _FORMATS[prefix].fullmatch(value) is not None


def is_item_id(value: object) -> bool:
    """True for the id of any item kind this service issues."""
    return isinstance(value, str) and _ITEM_FORMAT.fullmatch(value) is not None


def response_id(tag: str = "") -> str:
    return new_id(RESPONSE, tag)


def conversation_id(tag: str = "") -> str:
    return new_id(CONVERSATION, tag)


def message_id() -> str:
    return new_id(MESSAGE)


def function_call_id() -> str:
    return new_id(FUNCTION_CALL)


def function_call_output_id() -> str:
    return new_id(FUNCTION_CALL_OUTPUT)


def call_id() -> str:
    return new_id(CALL)


def compaction_id() -> str:
    return new_id(COMPACTION)


def reasoning_id() -> str:
    return new_id(REASONING)
