"""The `compaction` item: a summary standing in for the conversation history it replaced.

Its `encrypted_content` is the summary as base64-encoded JSON: opaque to clients, as the Open Responses
field is, but not encrypted. Only turnstream's own compaction items can be read back; one from another
server (OpenAI's are really encrypted) cannot.
"""

from __future__ import annotations

import base64
import binascii
import json

from shared import ids
from shared.models import Item

CREATED_BY = "turnstream"


def new(summary: str) -> Item:
    content = base64.b64encode(json.dumps({"summary": summary}).encode()).decode()
    return {"id": ids.compaction_id(), "type": "compaction", "encrypted_content": content, "created_by": CREATED_BY}


def summary_of(item: Item) -> str | None:
    try:
        payload = json.loads(base64.b64decode(str(item.get("encrypted_content")), validate=True))
    except (binascii.Error, ValueError):
        return None
    summary = payload.get("summary") if isinstance(payload, dict) else None
    return summary if isinstance(summary, str) else None
