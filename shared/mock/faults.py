"""The mock model failing on cue, as providers do: rate limits, overload, cut streams, silence.

Cues are written in the last user message, like the brain's other directives; the mock counts the requests
that carry the same message, so the first few fail and the ones after succeed (a retry resends the message):

    [fail=429x6]          the first 6 requests get 429 (once when `xN` is left out)
    [retry-after=1]       ... with `Retry-After: 1` (seconds); [retry-after-ms=200] sends `retry-after-ms`
    [fail=503x6]          any status: 503 Service Unavailable, 500, 400 (not retried), ...
    [silent]              the next request gets its headers and then nothing, until the client gives up
    [cut-after=10]        the next request's stream breaks off after 10 words (or argument fragments)
    [no-continue]         a request to continue a cut-off answer gets 400

Cues take turns in the order they are written: `[fail=503x2][cut-after=5]` answers 503 twice, then cuts
the third request's stream, then answers in full; `[cut-after=5][fail=429]` cuts first. Counts are kept per
message text (include something unique, such as a test's own id, to start from zero) and the oldest are
forgotten past `_REMEMBERED`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

_FAIL_RE = re.compile(r"\[fail=(\d{3})(?:x(\d+))?\]", re.IGNORECASE)
_RETRY_AFTER_RE = re.compile(r"\[retry-after=(\d+(?:\.\d+)?)\]", re.IGNORECASE)
_RETRY_AFTER_MS_RE = re.compile(r"\[retry-after-ms=(\d+)\]", re.IGNORECASE)
_SILENT_RE = re.compile(r"\[silent(?:x(\d+))?\]", re.IGNORECASE)
_CUT_RE = re.compile(r"\[cut-after=(\d+)(?:x(\d+))?\]", re.IGNORECASE)
_NO_CONTINUE_RE = re.compile(r"\[no-continue\]", re.IGNORECASE)
PATTERNS = (_FAIL_RE, _RETRY_AFTER_RE, _RETRY_AFTER_MS_RE, _SILENT_RE, _CUT_RE, _NO_CONTINUE_RE)

_REMEMBERED = 10_000
_REASONS = {429: "Rate limit reached for requests", 500: "The server had an error", 503: "The engine is overloaded"}
_TYPES = {429: "rate_limit_exceeded", 400: "invalid_request_error"}


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of (or while) answering it."""

    status: int | None = None  # answer with this error
    headers: dict[str, str] = field(default_factory=dict)
    silent: bool = False  # send headers, then nothing
    cut_after: int | None = None  # break the stream after this many pieces
    message: str = ""

    def body(self) -> dict[str, Any]:
        kind = _TYPES.get(self.status or 0, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": None, "code": kind}}


NONE = Fault()


class FaultCues:
    """Counts requests per message and decides each one's fault."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()

    def next(self, text: str, *, continuation: bool) -> Fault:
        if continuation and _NO_CONTINUE_RE.search(text):
            return Fault(status=400, message="This model cannot continue a partial assistant message.")
        cues = sorted(
            (match.start(), pattern, match)
            for pattern in (_FAIL_RE, _SILENT_RE, _CUT_RE)
            for match in pattern.finditer(text)
        )
        if not cues:
            return NONE
        n = self._count(text)
        for _, pattern, cue in cues:
            times = int((cue.group(1) if pattern is _SILENT_RE else cue.group(2)) or 1)
            if n > times:
                n -= times
                continue
            if pattern is _FAIL_RE:
                status = int(cue.group(1))
                return Fault(status=status, headers=_retry_headers(text), message=_message(status))
            if pattern is _SILENT_RE:
                return Fault(silent=True)
            return Fault(cut_after=int(cue.group(1)))
        return NONE

    def _count(self, text: str) -> int:
        n = self._seen.pop(text, 0) + 1
        self._seen[text] = n
        while len(self._seen) > _REMEMBERED:
            self._seen.popitem(last=False)
        return n


def _retry_headers(text: str) -> dict[str, str]:
    headers = {}
    if after := _RETRY_AFTER_RE.search(text):
        headers["retry-after"] = after.group(1)
    if after_ms := _RETRY_AFTER_MS_RE.search(text):
        headers["retry-after-ms"] = after_ms.group(1)
    return headers


def _message(status: int) -> str:
    return f"mock upstream: {_REASONS.get(status, 'failure on cue')} ({status})"
