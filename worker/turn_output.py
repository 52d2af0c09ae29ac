"""The output items of one turn, in output_index order, and what of them the conversation keeps."""

from __future__ import annotations

from shared import events
from shared.models import Item
from worker.resume import Resumed


class TurnOutput:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.text_bytes = 0
        # Item index -> (what streams into it, its text so far), while it streams.
        self._streaming: dict[int, tuple[events.PartKind, str]] = {}

    @classmethod
    def restore(cls, resumed: Resumed) -> TurnOutput:
        """The output as a dead attempt left it, for a re-run to continue."""
        output = cls()
        output.items = [dict(item) for item in resumed.items]
        for index, item in enumerate(output.items):
            kind = resumed.kind(index)
            if kind is None:
                continue
            text = resumed.text.get(index, "")
            if index in resumed.done:
                text = "".join(p.get("text") or p.get("refusal") or "" for p in item.get("content") or [])
            else:
                output._streaming[index] = (kind, text)
            output.text_bytes += len(text.encode())
        return output

    def add(self, item: Item) -> int:
        self.items.append(item)
        return len(self.items) - 1

    def replace(self, index: int, item: Item) -> None:
        self.items[index] = item
        self._streaming.pop(index, None)

    def append_text(self, index: int, delta: str, kind: events.PartKind = "text") -> None:
        """Text streamed into the item at `index`; it counts against the turn's output byte budget."""
        self._streaming[index] = (kind, self._streaming.get(index, (kind, ""))[1] + delta)
        self.text_bytes += len(delta.encode())

    def settled(self, client_tools: frozenset[str]) -> list[Item]:
        """The output as it stands when a turn stops early (cancel, failure, limit).

        A message or reasoning item still streaming is kept with the text so far, marked incomplete. A
        server-side tool call without its result is dropped, with its half-written result, so history never
        holds an orphan call; calls to the client's own tools stay, the client answers them.
        """
        answered = {
            i["call_id"] for i in self.items if i["type"] == "function_call_output" and i["status"] == "completed"
        }
        kept: list[Item] = []
        for index, item in enumerate(self.items):
            if item["type"] in ("message", "reasoning") and item["status"] == "in_progress":
                kind, text = self._streaming.get(index, ("text", ""))
                if text:
                    kept.append(events.streamed_item(kind, item["id"], text, "incomplete"))
            elif item["type"] == "function_call":
                if item["call_id"] in answered or (item["name"] in client_tools and item["status"] == "completed"):
                    kept.append(item)
            elif item["type"] == "function_call_output":
                if item["status"] == "completed":
                    kept.append(item)
            else:
                kept.append(item)
        return kept
