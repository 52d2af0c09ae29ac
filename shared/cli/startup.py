"""What can stop a command from starting, found before anything is announced, and said in one line with its fix."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

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


async def redis_problem(url: str) -> str | None:
    """Why Redis cannot be reached at `url`, or None when it answers."""
    client: Redis = Redis.from_url(url, socket_connect_timeout=_REDIS_PING_TIMEOUT_S)
    try:
        async with asyncio.timeout(_REDIS_PING_TIMEOUT_S):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        return f"cannot reach Redis at {redacted(url)} ({str(exc) or type(exc).__name__}); check TURNSTREAM_REDIS_URL"
    finally:
        await client.aclose()
    return None


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
