"""A raw SSE reader over httpx, for the streams the openai SDK has no method for (a conversation's feed) and
for tests that must close a connection at an exact point or resume with Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Frame:
    id: int | None
    event: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def frames(response: httpx.Response) -> Iterator[Frame]:
    """The frames of an SSE body as they arrive; comment lines (keep-alives) are skipped."""
    event_id: int | None = None
    event: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield Frame(event_id, event, "\n".join(data))
            event_id, event, data = None, None, []
        elif line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
