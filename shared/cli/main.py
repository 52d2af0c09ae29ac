"""The `turnstream` command.

This is the composition root: the one module that knows both the API and the worker, importing each
only inside the command that runs it. The API and the worker never import each other.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from pydantic import ValidationError

from shared.cli import keys as key_commands
from shared.cli import status, webhooks
from shared.cli.startup import (
    StartupError,
    announce,
    check_seed_keys,
    listen,
    redacted,
    redis_errors,
    redis_problem,
    require_redis_url,
)
from shared.gc_freeze import freeze_startup_objects
from shared.logs import configure_logging
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from worker.arq_worker import FastPickupWorker

SETTINGS_HELP = """\
settings come from the environment (or a .env file in the working directory); the main ones:
  TURNSTREAM_REDIS_URL      Redis URL; unset = an embedded in-process Redis (`dev` only)
  TURNSTREAM_HOST, _PORT    API bind address (127.0.0.1, 8000); --host/--port override them
  OPENAI_BASE_URL           upstream Chat Completions endpoint, usually ending in /v1; unset = built-in mock
  OPENAI_API_KEY            upstream API key
  TURNSTREAM_AGENTS         module name or .py file defining AGENTS (default: worker.default_agents)
  TURNSTREAM_UPSTREAM_MODEL upstream model of the default agents (default: turnstream-mock)
  TURNSTREAM_ALLOW_MODEL_PASSTHROUGH  true: a `model` no agent has goes to the upstream as it is
  TURNSTREAM_LOG_FORMAT     human (default) or json: one object per line
  TURNSTREAM_MOCK_PORT      built-in mock model port (8001)
every setting: the Settings table in README.md"""

# Each subcommand's help points at the block above instead of repeating it.
SEE_SETTINGS = "settings come from the environment (TURNSTREAM_*, OPENAI_*); `turnstream --help` lists the main ones"

_PORT_FIX = "set TURNSTREAM_PORT or pass --port"
_MOCK_PORT_FIX = "set TURNSTREAM_MOCK_PORT"

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (uvicorn[standard] brings it), else stock asyncio.

    uvicorn picks uvloop only when it runs its own loop: started through `Server.serve()`, as here, it
    runs on whatever loop it is given (stock asyncio under `asyncio.run`). arq's `Worker.run` runs on the
    current event loop. So every entry point makes its loop here.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    command: str = args.command
    try:
        settings = _settings(args)
    except ValidationError as exc:
        _exit(command, "; ".join(_setting_error(e) for e in exc.errors()), 2)
    interactive = command in ("chat", "tail")
    # The interactive tools print their own output; the SDK's INFO lines would land between the turns.
    configure_logging(settings.log_format, logging.WARNING if interactive else logging.INFO)
    try:
        _run(command, args, settings)
    except StartupError as exc:
        _tell(settings, f"turnstream {command}: {exc}", logging.ERROR)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        if not interactive:
            _tell(settings, f"turnstream {command}: stopped")
    except BrokenPipeError:
        # The reader went away (`turnstream tail ID | head`): not an error. Python would still try to flush
        # stdout at exit and print a traceback about it; point stdout at /dev/null first, as its docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="turnstream",
        description="Chat-agent turns on a Redis-backed worker fleet.",
        epilog=SETTINGS_HELP,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"turnstream {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=SEE_SETTINGS, formatter_class=formatter)

    dev = command("dev", "API + worker + mock model in one process (embedded Redis unless a URL is set)")
    api = command("api", "serve the HTTP API")
    for server in (dev, api):
        server.add_argument("--host", help="API bind address (TURNSTREAM_HOST)")
        server.add_argument("--port", type=int, help="API port (TURNSTREAM_PORT)")
    worker = command("worker", "run a worker")
    worker.add_argument("--check", action="store_true", help="exit 0 if a worker heartbeat is recent")
    mock = command("mock", "serve the built-in mock model")
    mock.add_argument("--host", help="bind address (TURNSTREAM_HOST)")
    mock.add_argument("--port", type=int, dest="mock_port", help="port (TURNSTREAM_MOCK_PORT)")
    chat = command("chat", "chat in the terminal, streaming token by token")
    chat.add_argument("--url", default=None, help="API base URL (default: http://TURNSTREAM_HOST:TURNSTREAM_PORT/v1)")
    chat.add_argument("--model", default=None)
    tail = command("tail", "print a response's events as they come")
    tail.add_argument("response_id")
    tail.add_argument("--after", type=int, default=-1, help="start after this sequence number")
    tail.add_argument(
        "--url",
        default=None,
        help="read through this API's SSE (default: Redis if TURNSTREAM_REDIS_URL is set, else this machine's API)",
    )
    key_commands.add_parser(sub)
    webhooks.register(sub)
    status.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("turnstream")
    except PackageNotFoundError:  # a checkout run without installing it
        return "unknown (not installed)"


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: value for name in ("host", "port", "mock_port") if (value := getattr(args, name, None)) is not None
    }
    settings = get_settings()
    return settings.model_copy(update=overrides) if overrides else settings


def _setting_error(error: Any) -> str:
    name = "_".join(str(part) for part in error["loc"]).upper()
    return f"TURNSTREAM_{name}: {error['msg'].removeprefix('Value error, ')}"


def _exit(command: str, message: str, code: int) -> NoReturn:
    print(f"turnstream {command}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _tell(settings: Settings, message: str, level: int = logging.INFO, *, banner: bool = False) -> None:
    """Banners (stdout) and one-line notes (stderr); with JSON logs they are log records, so every line is JSON."""
    if settings.log_format == "json":
        logging.getLogger("turnstream").log(level, message)
    else:
        print(message, file=sys.stdout if banner else sys.stderr, flush=True)


def _run(command: str, args: argparse.Namespace, settings: Settings) -> None:
    if command == "dev":
        run(_dev(settings))
    elif command == "api":
        run(_api(settings))
    elif command == "worker" and args.check:
        with redis_errors(settings.redis_url):
            sys.exit(_worker_check(settings))
    elif command == "worker":
        sys.exit(_worker(settings))
    elif command == "mock":
        run(_mock(settings))
    elif command == "chat":
        from shared.cli.chat import run_chat

        run_chat(args.url or _local_api(settings), args.model or settings.default_model, api_key=_client_key(settings))
    elif command == "tail":
        from shared.cli.tail import run_tail

        run(run_tail(settings, args.response_id, args.after, args.url))
    elif command == "keys":
        with redis_errors(settings.redis_url):
            sys.exit(key_commands.run(settings, args))
    elif command in ("webhooks", "status"):
        with redis_errors(settings.redis_url):
            sys.exit(args.handler(settings, args))


def _local_api(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.port}/v1"


def _playground(settings: Settings) -> str:
    return f"open http://{settings.host}:{settings.port}/ for the playground"


async def _serve(app: Any, sock: socket.socket) -> None:
    import uvicorn

    announce(sock)
    # log_config=None: uvicorn's records flow to the handler configure_logging installed (human or JSON).
    config = uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=5)
    await uvicorn.Server(config).serve(sockets=[sock])


def _build_worker(settings: Settings, redis: ArqRedis | None = None, handle_signals: bool = True) -> FastPickupWorker:
    from worker.service import build_worker

    try:
        return build_worker(settings, redis, handle_signals=handle_signals)
    except (ImportError, ValueError) as exc:
        raise StartupError(f"TURNSTREAM_AGENTS={settings.agents}: {exc}") from exc


async def _api(settings: Settings) -> None:
    from api.app import create_app

    url = require_redis_url(settings)
    check_seed_keys(settings)
    problem = await redis_problem(url)
    if problem:
        # Not fatal: the API starts while Redis is away, answers 503 meanwhile and recovers by itself.
        logging.getLogger("turnstream").warning("%s; answering 503 until it is reachable", problem)
    sock = listen(settings.host, settings.port, "the API", _PORT_FIX)
    if settings.auth is False:
        access = "open: no API key checked (TURNSTREAM_AUTH=off)"
    else:
        access = (
            "API keys required: make one with `turnstream keys create --project NAME` (same TURNSTREAM_REDIS_URL); "
            "clients send it as a Bearer token (the openai SDK's api_key)"
        )
    _tell(settings, f"turnstream api: API on {_local_api(settings)}, Redis {redacted(url)}; access: {access}; "
          f"{_playground(settings)}", banner=True)
    app = create_app(settings)
    freeze_startup_objects()
    await _serve(app, sock)


async def _mock(settings: Settings) -> None:
    from shared.mock.server import MODEL_ID, create_app

    sock = listen(settings.host, settings.mock_port, "the mock model", "set TURNSTREAM_MOCK_PORT or pass --port")
    base = f"http://{settings.host}:{settings.mock_port}/v1"
    _tell(settings, f"turnstream mock: model {MODEL_ID!r} on {base} (point OPENAI_BASE_URL there)", banner=True)
    await _serve(create_app(settings.mock_token_delay_ms, settings.mock_context_tokens), sock)


def _worker(settings: Settings) -> int:
    require_redis_url(settings)
    asyncio.set_event_loop(new_event_loop())  # arq's Worker takes the current loop when it is built
    worker = _build_worker(settings)  # a bad agents module is reported before anything else
    # Not fatal when Redis is away: a worker started before Redis (or during an outage) waits for it, saying
    # so once (worker/redis_retry.py), and then serves.
    freeze_startup_objects()
    worker.run()
    return 0


def _worker_check(settings: Settings) -> int:
    url = require_redis_url(settings)
    if problem := asyncio.run(redis_problem(url)):
        raise StartupError(problem)
    return asyncio.run(_read_worker_health(settings))


async def _read_worker_health(settings: Settings) -> int:
    """arq's health check (its messages, its exit codes), read through the service's own client, which also
    follows a cluster's slots."""
    from shared import keys
    from shared.redis_conn import connect

    redis = await connect(settings)
    try:
        # The worker refreshes its own key every 30 s (health_check_interval in worker/service.py).
        data = await redis.get(keys.worker_health(settings.queue_name, socket.gethostname()))
    finally:
        await redis.close()
    if data is None:
        print("Health check failed: no health check sentinel value found")
        return 1
    print(f"Health check successful: {data.decode()}")
    return 0


class _InProcessStop(logging.Filter):
    """arq's close() reports stopping an in-process worker as 'shutdown on SIGUSR1', though no signal came."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and args[0] == "SIGUSR1" and str(record.msg).startswith("shutdown on %s"):
            record.msg = "worker stopped" + str(record.msg).removeprefix("shutdown on %s")
            record.args = args[1:]
        return True


class _MockModelCalls(logging.Filter):
    """In `dev` the mock model shares the process and its uvicorn access logger: a line per model call of
    every turn would repeat what the turn's own lines say. The API answers that path with 404, never 200."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) == 5 and args[1:3] == ("POST", "/v1/chat/completions")
                    and args[4] == 200)


async def _dev(settings: Settings) -> None:
    from api.app import create_app
    from shared.mock.server import create_app as create_mock_app
    from shared.redis_conn import EmbeddedRedis, connect

    # Open unless TURNSTREAM_AUTH says otherwise, so the README's examples run with no key.
    settings = settings.model_copy(update={"auth": bool(settings.auth)})
    check_seed_keys(settings)
    embedded = EmbeddedRedis() if settings.redis_url is None else None
    if embedded is None and (problem := await redis_problem(settings.redis_url or "")):
        raise StartupError(problem)
    api_sock = listen(settings.host, settings.port, "the API", _PORT_FIX)
    mock_sock = None
    if settings.openai_base_url is None:
        mock_sock = listen(settings.host, settings.mock_port, "the built-in mock model", _MOCK_PORT_FIX)
    worker = _build_worker(settings, await connect(settings, embedded), handle_signals=False)
    logging.getLogger("arq.worker").addFilter(_InProcessStop())
    logging.getLogger("uvicorn.access").addFilter(_MockModelCalls())
    _print_dev_banner(settings, embedded is not None, _example_model(settings))
    tasks = [_serve(create_app(settings, embedded), api_sock), worker.async_run()]
    if mock_sock is not None:
        tasks.append(_serve(create_mock_app(settings.mock_token_delay_ms, settings.mock_context_tokens), mock_sock))
    freeze_startup_objects()
    try:
        await asyncio.gather(*tasks)
    finally:
        await worker.close()


def _example_model(settings: Settings) -> str:
    """The model the banner's example names: the default one if an agent serves it, else the first agent."""
    from worker.agents import load_agents

    names = [agent.name for agent in load_agents(settings.agents).all()]
    return settings.default_model if settings.default_model in names or not names else names[0]


def _print_dev_banner(settings: Settings, embedded: bool, model: str) -> None:
    base = f"http://{settings.host}:{settings.port}"
    where = "embedded in-process Redis (nothing persists)" if embedded else redacted(settings.redis_url or "")
    upstream = settings.openai_base_url or f"built-in mock model on :{settings.mock_port}"
    access = "API keys required" if settings.auth else "open: no API key checked (TURNSTREAM_AUTH=on to check)"
    headline = (
        f"turnstream dev: API on {base}/v1, {where}, upstream {upstream}; access: {access}; {_playground(settings)}"
    )
    if settings.log_format == "json":
        _tell(settings, headline, banner=True)
        return
    me = _self_command()
    chat_model = f" --model {model}" if model != settings.default_model else ""
    print(
        f"\nturnstream dev: API on {base}/v1, {where}, upstream {upstream}\n"
        f"  access: {access}\n"
        f"  {_playground(settings)}\n"
        f"  try:  curl -s {base}/v1/responses -H 'Content-Type: application/json' "
        f"-d '{{\"model\": \"{model}\", \"input\": \"My name is Ravi.\"}}'\n"
        f"  or:   {me} chat --url {base}/v1{chat_model}\n"
        f"  and:  {me} tail RESPONSE_ID --url {base}/v1\n",
        flush=True,
    )


def _self_command() -> str:
    """How to run `turnstream` from this shell: by name only if that name on PATH is this very script."""
    script = Path(sys.argv[0])
    if script.name != "turnstream":
        return f"{Path(sys.executable).name} -m shared.cli"
    found = shutil.which("turnstream")
    if found is not None and Path(found).resolve() == script.resolve():
        return "turnstream"
    try:
        return str(script.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(script.resolve())


def _client_key(settings: Settings) -> str | None:
    return settings.api_key.get_secret_value() if settings.api_key is not None else None
