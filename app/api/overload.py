"""Pure-ASGI concurrency limit: beyond ``STEWARD_MAX_CONCURRENCY`` requests in flight on
/predict and /feedback, a request gets an immediate 503 ``overloaded`` with Retry-After instead
of a place in a queue that grows without bound (and answers nobody in time).

A request takes its slot once its whole body has arrived (read here, then handed on): a client
that trickles its body holds a connection, never a slot, until app/api/body_timeout.py cuts it
off. Health probes, scrapes and the other routes are never limited.
"""

from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.api.paths import client_route, route_path
from app.errors import Overloaded
from app.metrics import Metrics


class ConcurrencyLimit:
    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0  # one event loop: no lock needed between the check and the increment
        self._refused = metrics.http_refused.labels("overloaded")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not client_route(route_path(scope)):
            await self.app(scope, receive, send)
            return
        arrived = deque(await _read_body(receive))
        if self.in_flight >= self.limit:
            self._refused.inc()
            error = Overloaded(f"more than {self.limit} requests in flight: retry later")
            await error_response(error)(scope, receive, send)
            return

        async def replay() -> Message:
            return arrived.popleft() if arrived else await receive()

        self.in_flight += 1
        try:
            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1


async def _read_body(receive: Receive) -> list[Message]:
    """The request's messages up to its body's last (or a disconnect), as they came."""
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages
