"""Where a re-run picks up: the output a dead attempt already streamed, read back from the event stream.

The stream is the truth of what clients were shown, so a re-run rebuilds its output from it rather than
starting over. Items whose `output_item.done` was written are final: they are kept as they are and go back
into the prompt, so a server tool whose result was streamed never runs again. The one item the attempt left
open (a message mid-text, a call mid-arguments, a tool result being computed) is continued under the same
item id and output index. An open reasoning item or refusal is not continued: the re-run closes it with
what was streamed (see AgentTurn._resume). Whatever the dead attempt had merged but not yet written was never seen by
anyone, so it is simply produced again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from shared.events import REASONING_DELTA, REFUSAL_DELTA, PartKind, StreamEvent, streamed_item
from shared.models import Item


@dataclass
class Resumed:
    items: list[Item] = field(default_factory=list)  # by output_index, as last streamed
    done: set[int] = field(default_factory=set)  # indexes whose output_item.done was streamed
    text: dict[int, str] = field(default_factory=dict)  # message or reasoning index -> text streamed so far
    refusals: set[int] = field(default_factory=set)  # message indexes whose text is a refusal
    arguments: dict[int, str] = field(default_factory=dict)  # call index -> arguments streamed so far

    def __bool__(self) -> bool:
        return bool(self.items)

    def open(self) -> list[int]:
        return [i for i in range(len(self.items)) if i not in self.done]

    def kind(self, index: int) -> PartKind | None:
        """What streams into the item at `index`, when it is a message or a reasoning item."""
        item = self.items[index]
        if item["type"] == "reasoning":
            return "reasoning"
        if item["type"] != "message":
            return None
        refused = index in self.refusals or any(p.get("type") == "refusal" for p in item.get("content") or [])
        return "refusal" if refused else "text"

    def done_items(self) -> list[Item]:
        return [self.items[i] for i in sorted(self.done)]

    def results(self) -> set[str]:
        """Call ids whose result was streamed in full."""
        return {
            item["call_id"]
            for i, item in enumerate(self.items)
            if i in self.done and item["type"] == "function_call_output"
        }

    def rounds(self) -> int:
        """Model rounds that ended in tool calls: each run of consecutive function_call items is one."""
        count, previous = 0, None
        for item in self.items:
            if item["type"] == "function_call" and previous != "function_call":
                count += 1
            previous = item["type"]
        return count


def fold(stream: list[StreamEvent]) -> Resumed:
    """Replays the output events of a response's stream into the items a client holds after them."""
    out = Resumed()
    for event in stream:
        if not event.type.startswith("response.") or event.type in _LIFECYCLE:
            continue
        body = json.loads(event.data)
        index = body.get("output_index")
        if event.type == "response.output_item.added":
            if index == len(out.items):
                out.items.append(body["item"])
        elif index is None or index >= len(out.items):
            continue  # belongs to no item this reader knows; nothing a client could have rendered
        elif event.type in ("response.output_text.delta", REASONING_DELTA, REFUSAL_DELTA):
            out.text[index] = out.text.get(index, "") + body["delta"]
            if event.type == REFUSAL_DELTA:
                out.refusals.add(index)
        elif event.type == "response.function_call_arguments.delta":
            out.arguments[index] = out.arguments.get(index, "") + body["delta"]
        elif event.type == "response.output_item.done":
            out.items[index] = body["item"]
            out.done.add(index)
    return out


_LIFECYCLE = frozenset(
    {
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
        "response.failed",
        "response.incomplete",
    }
)


def stopped_output(resumed: Resumed, client_tools: frozenset[str]) -> list[Item]:
    """What a dead attempt produced, kept as a cancel keeps a live turn's output (TurnOutput.settled): for a
    re-run that finds its turn cancel-requested (an interrupt that came while no worker held it).

    Finished items stay; a message or reasoning item left open keeps its text so far, marked incomplete; a
    server-side call without a streamed result is dropped, with its half-written result.
    """
    answered = resumed.results()
    kept: list[Item] = []
    for index, item in enumerate(resumed.items):
        kind = resumed.kind(index)
        if index not in resumed.done:
            text = resumed.text.get(index, "")
            if kind is not None and text:
                kept.append(streamed_item(kind, item["id"], text, "incomplete"))
        elif item["type"] == "function_call":
            if item["call_id"] in answered or item["name"] in client_tools:
                kept.append(item)
        else:
            kept.append(item)
    return kept
