"""Log records for people (the default) or for machines (`TURNSTREAM_LOG_FORMAT=json`), tagged with the turn.

A turn's identifiers ride in a context variable: the worker binds them where a turn starts running and
the API where a request is handled, so every record logged underneath (by turnstream, arq, uvicorn or
httpx) carries them without being passed along. Only the whitelisted fields below are ever written:
no `extra` attribute, so no secret or prompt text can ride along with a record by accident.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from opentelemetry import trace
from starlette.types import ASGIApp, Receive, Scope, Send

LogFormat = Literal["human", "json"]

# The order in which they appear in a record; nothing outside this tuple is ever written.
CONTEXT_FIELDS = ("response_id", "conversation_id", "project", "attempt", "trace_id")

_context: ContextVar[dict[str, Any] | None] = ContextVar("turnstream_log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Binds fields for everything logged inside the block (and in tasks it starts); `add` extends them."""
    token = _context.set({**(_context.get() or {}), **_known(fields)})
    try:
        yield _context.get() or {}
    finally:
        _context.reset(token)


def add_log_context(**fields: Any) -> None:
    """Adds fields learnt later (the attempt, the conversation) to the innermost bound context."""
    current = _context.get()
    if current is None:
        # No enclosing `log_context`: start one for the rest of this task.
        _context.set(_known(fields))
    else:
        # Mutated in place so the enclosing block (and the tasks sharing its dict) see the same turn.
        current.update(_known(fields))


def current_context() -> dict[str, Any]:
    fields = dict(_context.get() or {})
    if "trace_id" not in fields:
        trace_id = _current_trace_id()
        if trace_id:
            fields["trace_id"] = trace_id
    return {name: fields[name] for name in CONTEXT_FIELDS if name in fields}


def _known(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"not a log context field: {', '.join(sorted(unknown))}")
    return {name: value for name, value in fields.items() if value is not None}


def _current_trace_id() -> str | None:
    # Without a configured tracer provider the current span is invalid and this costs a context lookup.
    span_context = trace.get_current_span().get_span_context()
    return f"{span_context.trace_id:032x}" if span_context.is_valid else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, the turn's context, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(current_context())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class HumanFormatter(logging.Formatter):
    """The classic line, followed by the turn's identifiers when there are any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = current_context()
        fields.pop("trace_id", None)  # 32 hex digits on every line help no human reader
        if fields:
            line += " [" + " ".join(f"{name}={value}" for name, value in fields.items()) + "]"
        return line


def configure_logging(fmt: LogFormat, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Routes every logger, uvicorn's included (run it with `log_config=None`), to one stderr handler."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's defaults give its loggers their own handlers; here they flow to the root's.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    # A line per upstream HTTP request (the openai SDK's transports) says nothing the turn's own lines do not.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    arq_worker = logging.getLogger("arq.worker")
    if not any(isinstance(f, ArqJobLines) for f in arq_worker.filters):
        arq_worker.addFilter(ArqJobLines())
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, OnceEach) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(OnceEach())


class ArqJobLines(logging.Filter):
    """Drops arq's lines per job start and end and per health record: the worker logs each turn's end itself
    ("turn ended: completed"), with the turn's identifiers."""

    _PREFIXES = ("%6.2fs → ", "%6.2fs ← ", "recording health")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._PREFIXES)


class OnceEach(logging.Filter):
    """Passes each distinct lifecycle line once: `dev` runs two uvicorn servers (API and mock model) in one
    process, and each would say "Started server process", "Application startup complete" and so on."""

    _LIFECYCLE = (
        "Started server process",
        "Waiting for application",
        "Application startup complete",
        "Shutting down",
        "Application shutdown complete",
        "Finished server process",
    )

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if not message.startswith(self._LIFECYCLE):
            return True
        line = record.getMessage()
        if line in self._seen:
            return False
        self._seen.add(line)
        return True


class LogContextMiddleware:
    """Gives every HTTP request its own log context, so what a route adds stays with that request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with log_context():
            await self.app(scope, receive, send)
