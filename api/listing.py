"""OpenAI's cursor-paginated list shape: {object: "list", data, first_id, last_id, has_more}."""

from __future__ import annotations

from typing import Any

from api.errors import invalid


def paginate(items: list[dict[str, Any]], *, limit: int, order: str, after: str | None) -> dict[str, Any]:
    ordered = items if order == "asc" else list(reversed(items))
    start = 0
    if after is not None:
        positions = [i for i, item in enumerate(ordered) if item.get("id") == after]
        if not positions:
            raise invalid(f"No item with id '{after}' to page after.", "after")
        start = positions[0] + 1
    page = ordered[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": start + limit < len(ordered),
    }
