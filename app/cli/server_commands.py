"""``steward status`` and ``serve``: ask a running server what it serves (app/status.py, the
standard library only), and start one (the server and its store imported when it starts)."""

import argparse
import logging
import logging.config
import math
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING, Any

from app import status
from app.cli import arguments
from app.cli.parser import Commands, add_command
from app.errors import StewardError, StoreUnavailable
from app.settings import Settings

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from app.main import Shutdown

STARTUP_FAILURE = 3  # uvicorn's exit status when the app's start-up failed


def add_commands(commands: Commands) -> None:
    status_ = add_command(
        commands,
        "status",
        "ask the running server what it serves",
        "Ask a running server (GET /models, or GET /models/MODEL) which version of each model\n"
        "it serves, its aliases, and why a version was refused. The server is found at\n"
        "STEWARD_HOST:STEWARD_PORT, or --url.",
        "examples:\n  steward status\n  steward status iris --url http://steward:8000",
    )
    status_.add_argument(
        "model", nargs="?", type=arguments.model_name, metavar="MODEL", help="one model"
    )
    status_.add_argument(
        "--url", type=arguments.url, help="the server (default: http://STEWARD_HOST:STEWARD_PORT)"
    )
    status_.set_defaults(command=_status)

    serve = add_command(
        commands,
        "serve",
        "start the HTTP server",
        "Serve every model in the registry. Settings are checked, and the prediction store\n"
        "opened, before the server starts: a problem is one line and exit status 1.\n"
        "SIGTERM (or Ctrl-C) drains: new connections are refused, requests in flight get\n"
        "STEWARD_DRAIN_SECONDS, the prediction log writes every acknowledged row; exit status\n"
        "0, or 1 if rows were left unwritten. With --workers N, each worker drains so, and the\n"
        "exit status is the worst of theirs (docs/operations.md, Several workers on one host).",
        "examples:\n  steward serve\n  steward serve --host 0.0.0.0 --port 8080\n"
        "  steward serve --workers 2",
    )
    serve.add_argument("--host", help="bind address (default: STEWARD_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=arguments.port, help="port (default: STEWARD_PORT or 8000)")
    serve.add_argument(
        "--workers",
        type=arguments.worker_count,
        help="worker processes sharing the port (default: STEWARD_WORKERS or 1)",
    )
    serve.set_defaults(command=_serve)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    url = args.url or status.server_url(settings.host, settings.port)
    if args.model is None:
        lines = status.render_models(status.fetch(url))
    else:
        lines = status.render_model(status.fetch(url, args.model))
    print("\n".join(lines))
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from app import logs
    from app.main import Shutdown, create_app
    from app.store import open_configured_store

    # What the command line says is part of the settings every worker gets.
    given = {"host": args.host, "port": args.port, "workers": args.workers}
    settings = settings.model_copy(update={k: v for k, v in given.items() if v is not None})
    # Pre-flight: what would fail in the server's start-up fails here, in one line.
    shutdown = Shutdown()
    app = create_app(settings, shutdown)  # refuses a models directory that is not there
    try:
        open_configured_store(settings).close()
    except StoreUnavailable as exc:
        source = "STEWARD_DATABASE_URL" if settings.database_url else "STEWARD_DATA_DIR"
        raise StoreUnavailable(f"{exc} ({source})") from exc
    _check_port_free(settings.host, settings.port)
    # One handler and formatter for Steward's lines, uvicorn's and Python's warnings alike.
    log_config = logs.config(settings)
    logging.config.dictConfig(log_config)
    logging.captureWarnings(True)
    if settings.workers > 1:
        from app.cli import workers

        return workers.supervise(settings, log_config)
    return serve_app(app, shutdown, settings, log_config)


def serve_app(
    app: "FastAPI",
    shutdown: "Shutdown",
    settings: Settings,
    log_config: dict[str, Any],
    sockets: "list[socket.socket] | None" = None,
) -> int:
    """Serve ``app`` in this process until stopped (on ``sockets``: a worker on its
    supervisor's socket); the exit status: 0 drained, 3 the app's start-up failed; an error
    when acknowledged predictions may be unwritten (what ``shutdown`` says)."""
    import uvicorn

    from app.api.header_timeout import header_timeout_protocol

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=header_timeout_protocol(settings.header_timeout_seconds),
        log_config=log_config,
        access_log=False,  # steward.access has one line a request, with its id (app/logs.py)
        # Whole seconds for uvicorn, rounded up: 0.5 must not become "cancel requests at once".
        timeout_graceful_shutdown=math.ceil(settings.drain_seconds),
    )
    server = uvicorn.Server(config)
    _run_until_stopped(server, sockets)
    if not server.started:  # the app's start-up failed; uvicorn logged why
        return STARTUP_FAILURE
    if not shutdown.done:  # the app's shutdown failed before it closed the log
        raise StewardError(
            "shut down before the prediction log was drained: acknowledged predictions may be "
            "unwritten (see the log above)"
        )
    if shutdown.unwritten_rows:
        raise StoreUnavailable(
            f"shut down with {shutdown.unwritten_rows} acknowledged predictions unwritten: the "
            "prediction store did not take them within STEWARD_SHUTDOWN_TIMEOUT_SECONDS"
        )
    return 0


def _run_until_stopped(
    server: "uvicorn.Server", sockets: "list[socket.socket] | None" = None
) -> None:
    """Serve until SIGTERM or SIGINT, then drain: a graceful stop returns, and the caller's
    exit status says how it went.

    uvicorn catches both signals while it serves, shuts down gracefully, then raises the signal
    again for the handler it found, which by default kills the process (exit 143 for SIGTERM,
    a KeyboardInterrupt for SIGINT) whether or not the drain went well. The handler it finds is
    this one: it asks uvicorn to stop (a signal before uvicorn took over, during start-up,
    still stops it), and the signal raised again after the drain changes nothing.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        server.handle_exit(signum, frame)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line, before the models load, when the address is taken or not ours."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise StewardError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (--host/--port, "
            "STEWARD_HOST/STEWARD_PORT)"
        ) from exc
