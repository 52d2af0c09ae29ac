"""OpenAI's cursor-paginated list shape: {object: "list", data, first_id, last_id, has_more}."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Query

from api.errors import invalid
from shared import ids


@dataclass
class PageQuery:
    """The `limit`, `order` and `after` query parameters every list endpoint takes."""

    limit: Annotated[int, Query(ge=1, le=100)] = 20
    order: Annotated[Literal["asc", "desc"], Query()] = "desc"
    after: str | None = None


Page = Annotated[PageQuery, Depends()]


def paginate(items: list[dict[str, Any]], page: PageQuery) -> dict[str, Any]:
    ordered = items if page.order == "asc" else list(reversed(items))
    start = 0
    if page.after is not None:
        well_formed = ids.is_item_id(page.after)
        positions = [i for i, item in enumerate(ordered) if well_formed and item.get("id") == page.after]
        if not positions:
            raise invalid(f"No item with id '{page.after}' to page after.", "after")
        start = positions[0] + 1
    chunk = ordered[start : start + page.limit]
    return {
        "object": "list",
        "data": chunk,
        "first_id": chunk[0]["id"] if chunk else None,
        "last_id": chunk[-1]["id"] if chunk else None,
        "has_more": start + page.limit < len(ordered),
    }
