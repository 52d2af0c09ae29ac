"""The output items of one turn, in output_index order, and what of them the conversation keeps."""

from __future__ import annotations

from shared import events
from shared.models import Item
from worker.resume import Resumed


class TurnOutput:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.text_bytes = 0
        self._streaming_text: dict[int, str] = {}  # message index -> text so far, while it streams

    @classmethod
    def restore(cls, resumed: Resumed) -> TurnOutput:
        """The output as a dead attempt left it, for a re-run to continue."""
        output = cls()
        output.items = [dict(item) for item in resumed.items]
        for index, item in enumerate(output.items):
            if item["type"] != "message":
                continue
            text = resumed.text.get(index, "")
            if index in resumed.done:
                text = "".join(p.get("text", "") for p in item.get("content") or [])
            else:
                output._streaming_text[index] = text
            output.text_bytes += len(text.encode())
        return output

    def add(self, item: Item) -> int:
        self.items.append(item)
        return len(self.items) - 1

    def replace(self, index: int, item: Item) -> None:
        self.items[index] = item
        self._streaming_text.pop(index, None)

    def append_text(self, index: int, delta: str) -> None:
        self._streaming_text[index] = self._streaming_text.get(index, "") + delta
        self.text_bytes += len(delta.encode())

    def settled(self, client_tools: frozenset[str]) -> list[Item]:
        """The output as it stands when a turn stops early (cancel, failure, limit).

        A message still streaming is kept with the text so far, marked incomplete. A server-side tool call
        without its result is dropped, with its half-written result, so history never holds an orphan call;
        calls to the client's own tools stay, the client answers them.
        """
        answered = {
            i["call_id"] for i in self.items if i["type"] == "function_call_output" and i["status"] == "completed"
        }
        kept: list[Item] = []
        for index, item in enumerate(self.items):
            if item["type"] == "message" and item["status"] == "in_progress":
                text = self._streaming_text.get(index, "")
                if text:
                    kept.append(events.message_item(item["id"], text, "incomplete"))
            elif item["type"] == "function_call":
                if item["call_id"] in answered or (item["name"] in client_tools and item["status"] == "completed"):
                    kept.append(item)
            elif item["type"] == "function_call_output":
                if item["status"] == "completed":
                    kept.append(item)
            else:
                kept.append(item)
        return kept
