"""Checks objects against the Open Responses spec (docs/specs) and the openai SDK's own types, both at once.

The spec is OpenAPI 3.1, whose schemas are JSON Schema 2020-12: each component is validated with `jsonschema`,
`$ref`s resolved through a `referencing` registry holding the whole document. The SDK check re-validates the
same JSON with the SDK's pydantic models, so an object passes only if a strict client and the SDK both take it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from openai.types.conversations import ConversationItem
from openai.types.responses import Response, ResponseItem, ResponseOutputItem, ResponseStreamEvent
from pydantic import TypeAdapter
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "specs" / "openresponses-openapi.json"
SPEC_VERSION = "2026-04-24"
_URI = "urn:openresponses:openapi"

Json = dict[str, Any]

# Defects of the pinned spec version, patched before validating so they do not mask real failures.
# JsonSchemaResponseFormat types `schema` as JSON null, which makes every echoed json_schema format invalid;
# the request side (JsonSchemaResponseFormatParam) and OpenAI itself carry the schema object there.
_SPEC_PATCHES: dict[str, tuple[str, Any]] = {
    "JsonSchemaResponseFormat": ("schema", {"anyOf": [{"type": "object"}, {"type": "null"}]}),
}

_SDK_RESPONSE = TypeAdapter(Response)
_SDK_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
_SDK_OUTPUT_ITEM: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)
_SDK_INPUT_ITEM: TypeAdapter[Any] = TypeAdapter(ResponseItem)
_SDK_CONVERSATION_ITEM: TypeAdapter[Any] = TypeAdapter(ConversationItem)
# The one event naming the spec and the SDK disagree on: the spec's response.reasoning.{delta,done} are the
# SDK's response.reasoning_text.{delta,done}, field for field. turnstream sends the spec's names (the SDK's
# stream still parses them); the SDK check validates their bodies under the SDK's name.
SDK_EVENT_NAMES = {
    "response.reasoning.delta": "response.reasoning_text.delta",
    "response.reasoning.done": "response.reasoning_text.done",
}


@cache
def spec() -> Json:
    document: Json = json.loads(SPEC_PATH.read_text())
    assert document["info"]["version"] == SPEC_VERSION, document["info"]
    for schema_name, (prop, replacement) in _SPEC_PATCHES.items():
        document["components"]["schemas"][schema_name]["properties"][prop] = replacement
    return document


@cache
def _validator(schema_name: str) -> Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(_URI, Resource.from_contents(spec(), DRAFT202012))
    return Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{schema_name}"}, registry=registry)


@cache
def event_schema_names() -> dict[str, str]:
    """Streaming event type -> its component schema, from the text/event-stream union of POST /responses."""
    union = spec()["paths"]["/responses"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    names: dict[str, str] = {}
    for ref in union["oneOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        names[spec()["components"]["schemas"][name]["properties"]["type"]["enum"][0]] = name
    return names


def spec_errors(schema_name: str, obj: Any) -> list[str]:
    errors = sorted(_validator(schema_name).iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors]


def assert_spec_valid(schema_name: str, obj: Any) -> None:
    errors = spec_errors(schema_name, obj)
    assert not errors, f"not a valid {schema_name}:\n  " + "\n  ".join(errors) + f"\n{json.dumps(obj)[:2000]}"


@dataclass
class Conformance:
    """Validates objects as they are collected and counts them, so a test can show what it covered."""

    counts: dict[str, int] = field(default_factory=dict)

    def _seen(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def response(self, obj: Json) -> None:
        assert_spec_valid("ResponseResource", obj)
        _SDK_RESPONSE.validate_python(obj)
        _check_incomplete_items(obj)
        for item in obj["output"]:
            self.output_item(item)
        self._seen(f"response[{obj['status']}]")

    def output_item(self, obj: Json) -> None:
        assert_spec_valid("ItemField", obj)
        _SDK_OUTPUT_ITEM.validate_python(obj)
        self._seen(f"output_item[{obj['type']}]")

    def input_item(self, obj: Json) -> None:
        assert_spec_valid("ItemField", obj)
        _SDK_INPUT_ITEM.validate_python(obj)
        self._seen(f"input_item[{obj['type']}]")

    def conversation_item(self, obj: Json) -> None:
        assert_spec_valid("ItemField", obj)
        _SDK_CONVERSATION_ITEM.validate_python(obj)
        self._seen(f"conversation_item[{obj['type']}]")

    def event(self, obj: Json) -> None:
        name = event_schema_names().get(obj["type"])
        assert name is not None, f"event type {obj['type']!r} is not in the spec"
        assert_spec_valid(name, obj)
        _SDK_EVENT.validate_python({**obj, "type": SDK_EVENT_NAMES.get(obj["type"], obj["type"])})
        if "response" in obj:
            self.response(obj["response"])
        if obj.get("item") is not None:
            self.output_item(obj["item"])
        self._seen(f"event[{obj['type']}]")

    def sse(self, body: str) -> list[Json]:
        """Checks an SSE body frame by frame; returns its events in order."""
        events: list[Json] = []
        frames = [f for f in body.replace("\r\n", "\n").split("\n\n") if f.strip()]
        assert frames, "empty stream"
        *event_frames, last = frames
        assert _field(last, "data") == "[DONE]", f"the stream does not end with data: [DONE] but {last!r}"
        assert _field(last, "event") is None, f"the [DONE] frame carries an event name: {last!r}"
        for frame in event_frames:
            data = _field(frame, "data")
            assert data is not None and data != "[DONE]", f"frame without an event: {frame!r}"
            event = json.loads(data)
            assert _field(frame, "event") == event["type"], f"SSE event name differs from the body's type: {frame!r}"
            assert _field(frame, "id") == str(event["sequence_number"]), f"SSE id is not the sequence: {frame!r}"
            self.event(event)
            events.append(event)
        self._seen("sse_stream")
        return events


def _field(frame: str, name: str) -> str | None:
    # Keep-alive comment lines (": ...") may precede a frame; they carry no field.
    values = [line[len(name) + 1 :].lstrip(" ") for line in frame.split("\n") if line.startswith(f"{name}:")]
    assert len(values) <= 1, f"repeated {name} field in {frame!r}"
    return values[0] if values else None


def _check_incomplete_items(response: Json) -> None:
    """The spec's item state machine: an `incomplete` item must be the last one, in an `incomplete` response.

    A cancelled turn is the documented exception: its partial message is kept as `incomplete` (it was
    interrupted mid-sampling) inside a `cancelled` response; see the README's conformance notes.
    """
    output = response["output"]
    for index, item in enumerate(output):
        if item.get("status") != "incomplete":
            continue
        assert index == len(output) - 1, f"incomplete item {item['id']} is not the last output item"
        assert response["status"] in ("incomplete", "cancelled"), (
            f"incomplete item {item['id']} in a {response['status']} response"
        )


def assert_all(check: Conformance, kind: str, objects: Iterable[Json]) -> None:
    method = getattr(check, kind)
    for obj in objects:
        method(obj)
