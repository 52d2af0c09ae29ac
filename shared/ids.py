"""Unguessable ids carrying OpenAI's prefixes, so clients can route on them."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    # 24 random bytes = 192 bits: unguessable, and the shape clients expect (prefix_ + hex).
    return f"{prefix}_{secrets.token_hex(24)}"


def response_id() -> str:
    return new_id("resp")


def conversation_id() -> str:
    return new_id("conv")


def message_id() -> str:
    return new_id("msg")


def function_call_id() -> str:
    return new_id("fc")


def function_call_output_id() -> str:
    return new_id("fco")


def call_id() -> str:
    return new_id("call")


def compaction_id() -> str:
    return new_id("cmp")
