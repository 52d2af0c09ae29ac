"""What can stop a command from starting, found before anything is announced, and said in one line with its fix."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError

from shared.api_keys import seed_from_settings
from shared.settings import Settings

log = logging.getLogger("uvicorn.error")

_REDIS_PING_TIMEOUT_S = 3.0


class StartupError(Exception):
    """Raised when a command cannot start; its message names the setting or flag that fixes it."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def redacted(url: str) -> str:
    """The URL without its password, fit for a log line or an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def require_redis_url(settings: Settings) -> str:
    if settings.redis_url is None:
        raise StartupError(
            "TURNSTREAM_REDIS_URL is not set: point it at Redis (e.g. redis://127.0.0.1:6379/0), "
            "or run `turnstream dev` for API, worker and mock model in one process on an embedded Redis",
            2,
        )
    return settings.redis_url


def redis_failure(url: str, exc: BaseException) -> str:
    """One line saying why Redis at `url` refused or failed, and which setting to check."""
    text = (str(exc) or type(exc).__name__).rstrip(".")
    if isinstance(exc, AuthenticationError) or text.startswith(("NOAUTH", "WRONGPASS", "invalid username-password")):
        return f"Redis at {redacted(url)} refused the credentials ({text}); check the password in TURNSTREAM_REDIS_URL"
    return f"cannot reach Redis at {redacted(url)} ({text}); check TURNSTREAM_REDIS_URL"


@contextmanager
def redis_errors(url: str | None) -> Iterator[None]:
    """A command that only talks to Redis reports a Redis failure as one line (a StartupError), not a traceback."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StartupError(redis_failure(url or "", exc)) from None


async def redis_problem(url: str) -> str | None:
    """Why Redis cannot be reached at `url`, or None when it answers."""
    client: Redis = Redis.from_url(url, socket_connect_timeout=_REDIS_PING_TIMEOUT_S)
    try:
        async with asyncio.timeout(_REDIS_PING_TIMEOUT_S):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        return redis_failure(url, exc)
    finally:
        await client.aclose()
    return None


def check_seed_keys(settings: Settings) -> None:
    """A malformed TURNSTREAM_API_KEYS list, said in one line naming the entry and the fix, before anything starts."""
    source = " / ".join(
        name for name, value in (("TURNSTREAM_API_KEYS", settings.api_keys), ("TURNSTREAM_API_KEYS_FILE",
                                 settings.api_keys_file)) if value is not None
    )
    try:
        seed_from_settings(settings)
    except OSError as exc:
        raise StartupError(f"TURNSTREAM_API_KEYS_FILE={settings.api_keys_file}: {exc.strerror or exc}", 2) from None
    except ValidationError as exc:
        raise StartupError(f"{source}: {'; '.join(_seed_error(e) for e in exc.errors())}", 2) from None


def _seed_error(error: Any) -> str:
    loc = [str(part) for part in error["loc"]]
    where = f"entry {loc[0]}" + (f" '{'.'.join(loc[1:])}'" if len(loc) > 1 else "") if loc else "the list"
    return f"{where}: {str(error['msg']).removeprefix('Value error, ')}"


def listen(host: str, port: int, what: str, fix: str) -> socket.socket:
    """A listening socket, bound before any banner so that a busy port is reported, not announced."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening now means a client that connects before the server's loop runs waits instead of being refused.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"cannot listen on {host}:{port} for {what}: the port is in use; {fix}") from exc
        raise StartupError(f"cannot listen on {host}:{port} for {what}: {exc.strerror or exc}; {fix}") from exc
    sock.set_inheritable(True)
    return sock


def announce(sock: socket.socket) -> None:
    """uvicorn says this itself only when it binds the socket; the wording is kept for those who look for it."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
    log.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, port)
