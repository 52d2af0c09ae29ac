"""What the mock "sees" in a user message's images and files, so a test can tell they arrived intact.

The reply names each attachment's kind, size and detail level, all read from the chat content parts
exactly as the upstream received them (`image_url` parts with `detail`, `file` parts with `file_data`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any

_DATA_URL_RE = re.compile(r"^data:([^;,]+)?(?:;[^,]*)?,(.*)$", re.DOTALL)


def describe(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """A sentence about the last user message's images and files; None when it has neither."""
    content = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
    if not isinstance(content, list):
        return None
    images: list[str] = []
    files: list[str] = []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "image_url" and isinstance(part.get("image_url"), Mapping):
            image = part["image_url"]
            images.append(f"{_source(str(image.get('url', '')))}, detail {image.get('detail') or 'auto'}")
        elif part.get("type") == "file" and isinstance(part.get("file"), Mapping):
            file = part["file"]
            files.append(f"{file.get('filename') or 'unnamed'}, {_source(str(file.get('file_data', '')))}")
    if not images and not files:
        return None
    seen = [_listed(len(images), "image", images), _listed(len(files), "file", files)]
    return "I see " + " and ".join(s for s in seen if s) + "."


def _listed(count: int, noun: str, details: list[str]) -> str:
    if not count:
        return ""
    return f"{count} {noun}{'s' if count > 1 else ''} (" + "; ".join(details) + ")"


def _source(url: str) -> str:
    match = _DATA_URL_RE.match(url)
    if match is None:
        if url.startswith(("http://", "https://")):
            return url
        return f"{_decoded_size(url)} bytes" if url else "empty"
    media_type = match.group(1) or "unknown type"
    return f"{media_type}, {_decoded_size(match.group(2))} bytes"


def _decoded_size(data: str) -> int | str:
    try:
        return len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        return "undecodable"
