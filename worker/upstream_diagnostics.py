"""What the worker tells an operator about its upstream: which URL failed and why, and models it does not serve.

A misconfigured upstream otherwise shows only as `404: Error code: 404` on every turn.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import openai
from openai import AsyncOpenAI

from worker.agents import AgentRegistry

log = logging.getLogger(__name__)

_MODELS_CHECK_TIMEOUT_S = 10.0
_BASE_URL_HINT = "; many providers' base URL ends in /v1 (OPENAI_BASE_URL=https://HOST/v1)"


def shown_url(url: object) -> str:
    """Scheme, host and path only: a query string or user info may carry a key."""
    parts = urlsplit(str(url))
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _base_url_hint(status: int, url: object) -> str:
    return _BASE_URL_HINT if status == 404 and "/v1/" not in urlsplit(str(url)).path else ""


def describe_upstream_error(exc: openai.APIError) -> str:
    """The failed turn's error message: status, the URL tried, the upstream's message, and the likely fix."""
    url = shown_url(exc.request.url)
    if isinstance(exc, openai.APIStatusError):
        hint = _base_url_hint(exc.status_code, exc.request.url)
        return f"upstream model error {exc.status_code} from {url}: {exc.message}{hint}"
    if refused(exc):
        # The aiohttp transport reports a refused connection as "Request timed out.".
        return f"connection refused to {_base(exc.request.url)}"
    return f"upstream model error at {url}: {exc.message}"


def refused(exc: BaseException) -> bool:
    """True when the error comes from a refused connection (the aiohttp transport calls it a timeout)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _base(url: object) -> str:
    """The base URL a request went to: its URL without the endpoint's own path (/chat/completions)."""
    shown = shown_url(url)
    for endpoint in ("/chat/completions", "/models"):
        if shown.endswith(endpoint):
            return shown[: -len(endpoint)]
    return shown


async def check_upstream_models(client: AsyncOpenAI, agents: AgentRegistry) -> None:
    """Warns once, at start-up, when the upstream does not list a model an agent runs on."""
    base = shown_url(client.base_url).rstrip("/")
    try:
        page = await client.with_options(timeout=_MODELS_CHECK_TIMEOUT_S, max_retries=0).models.list()
        listed = {model.id async for model in page}
    except openai.APIStatusError as exc:
        hint = _base_url_hint(exc.status_code, exc.request.url)
        log.warning("upstream %s: listing its models answered %d%s", base, exc.status_code, hint)
        return
    except openai.APIError as exc:
        if refused(exc):
            log.warning("upstream %s refuses connections; turns fail (or fall back) until it answers", base)
        else:
            log.warning("upstream %s is not reachable yet (%s); turns fail until it is", base, exc.message)
        return
    missing = [agent for agent in agents if agent.model not in listed]
    if missing:
        which = ", ".join(f"agent {a.name!r} runs on {a.model!r}" for a in missing)
        log.warning(
            "upstream %s does not list every model the agents use: %s. Set TURNSTREAM_UPSTREAM_MODEL to a model "
            "it serves (for the default agents) or point TURNSTREAM_AGENTS at your own agents",
            base,
            which,
        )
