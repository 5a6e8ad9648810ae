"""The CPU time the request id, the access line and the API-key check add to one request.

Each middleware wraps a do-nothing ASGI app answering 200, and is called in a loop on one event
loop: the time per call, minus the bare app's, is what it adds to every /predict. In-process,
so that a few microseconds show on a shared machine where a whole request's CPU time varies by
more than that. The access line is written by the server's own logging configuration
(app/logs.py), to /dev/null.

    .venv/bin/python bench/request_overhead.py
"""

import asyncio
import copy
import logging
import logging.config
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG

from app import logs
from app.api.api_keys import ApiKeyMiddleware
from app.api.request_id import RequestIdMiddleware
from app.settings import Settings

CALLS = 20_000
ROUNDS = 5
KEY = "bench-key-0123456789abcdef"


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/predict/iris",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
    }


async def per_call(app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> float:
    """The best of ROUNDS mean CPU times of one call, in microseconds (CPU time: the machine
    may be shared)."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: Message) -> None:
        return None

    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(CALLS):
            # Each request in its own task, as uvicorn runs them.
            await asyncio.create_task(_call(app, scope(headers), receive, send))
        best = min(best, (time.process_time() - started) / CALLS * 1e6)
    return best


async def _call(app: ASGIApp, s: Scope, receive: Receive, send: Send) -> None:
    await app(s, receive, send)


def configure(settings: Settings) -> None:
    config = logs.config(settings)
    config["handlers"]["stderr"]["stream"] = open(Path("/dev/null"), "w")  # noqa: SIM115
    logging.config.dictConfig(config)


def uvicorn_config() -> dict[str, Any]:
    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = open(Path("/dev/null"), "w")  # noqa: SIM115
    return config


class UvicornAccess:
    """The line uvicorn's HTTP protocol logs when a response ends (access_log=True)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.logger = logging.getLogger("uvicorn.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if self.logger.isEnabledFor(logging.INFO):
            client = scope["client"]
            self.logger.info(
                '%s - "%s %s HTTP/%s" %d',
                f"{client[0]}:{client[1]}",
                scope["method"],
                scope["path"],
                "1.1",
                200,
            )


async def main() -> None:
    given_id = [(b"x-request-id", b"trace-0001")]
    keys = [SecretStr(KEY), SecretStr(KEY[::-1])]
    rows: list[tuple[str, float]] = []
    configure(Settings(log_level="warning"))
    rows.append(("bare app", await per_call(bare, [])))
    rows.append(
        (
            "request id, no access line (warning)",
            await per_call(RequestIdMiddleware(bare), given_id),
        )
    )
    rows.append(("request id generated, no line", await per_call(RequestIdMiddleware(bare), [])))
    for fmt in ("json", "text"):
        configure(Settings(log_level="info", log_format=fmt))
        app = RequestIdMiddleware(bare)
        rows.append((f"request id + access line ({fmt})", await per_call(app, given_id)))
    # What `steward serve` wrote before: uvicorn's own access line, its default configuration.
    logging.config.dictConfig(uvicorn_config())
    rows.append(("uvicorn's access line (before)", await per_call(UvicornAccess(bare), given_id)))
    configure(Settings(log_level="warning"))
    keyed = ApiKeyMiddleware(bare, keys)
    rows.append(
        ("API key check, 2 keys, valid key", await per_call(keyed, [(b"x-api-key", KEY.encode())]))
    )
    base = rows[0][1]
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}  us/call  added us")
    for name, micros in rows:
        print(f"{name:{width}}  {micros:7.2f}  {micros - base:8.2f}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
