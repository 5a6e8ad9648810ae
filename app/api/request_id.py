"""Pure-ASGI middleware: each request's id, in its response and its log lines, and its access line.

The id is the client's ``X-Request-ID`` when that is a safe one (app/logs.py: bounded, a plain
charset), else a new one; a hostile value is never logged nor sent back. Every response carries
it in ``X-Request-ID``, errors included (a 500 rendered outside this middleware takes it in
app/api/errors.py). One access line per request (logger ``steward.access``, level info) says
method, path, route, status, latency in milliseconds and client, and for /predict the model,
version and rows that answered; scrapes and probes log theirs at debug. Never a body.
"""

import logging
import re
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.api.paths import route_path

HEADER = "X-Request-ID"
MAX_PATH = 200  # characters of the path in an access line
QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
# Characters that would break or fake a line of a text log (the path arrives percent-decoded:
# %0A is a newline): percent-encoded again in the access line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

access_logger = logging.getLogger(logs.ACCESS_LOGGER)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The context is the task's: not reset after the request, so that an error rendered
        # after this returns (Starlette's ServerErrorMiddleware, outermost) still has it.
        context = logs.begin(logs.request_id(Headers(scope=scope).get(HEADER)))
        header = (b"x-request-id", context.request_id.encode("latin-1"))
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = 500
            raise
        finally:
            level = logging.DEBUG if route_path(scope) in QUIET_PATHS else logging.INFO
            if access_logger.isEnabledFor(level):
                _access(level, scope, status, time.perf_counter() - started, context.fields)


def _access(level: int, scope: Scope, status: int, seconds: float, fields: dict[str, Any]) -> None:
    method, client = scope["method"][:16], scope.get("client")
    path = _CONTROL.sub(_percent, scope["path"][:MAX_PATH])
    latency_ms = round(seconds * 1000, 3)
    noted = "".join(f" {name}={value}" for name, value in fields.items())  # text logs show it
    access_logger.log(
        level,
        "%s %s %d %.3f ms%s",
        method,
        path,
        status,
        latency_ms,
        noted,
        extra={
            "method": method,
            "path": path,
            "route": getattr(scope.get("route"), "path", None),
            "status": status,
            "latency_ms": latency_ms,
            "client": client[0] if client else None,
            **fields,
        },
    )


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))
