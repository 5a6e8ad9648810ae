"""Pure-ASGI guard: a request body must arrive whole within ``STEWARD_BODY_TIMEOUT_SECONDS`` of
its headers, or the request gets 408 ``request_timeout`` and its connection is closed.

Without it a client sending one byte a second keeps a request (and whatever it holds) open for
as long as it likes. The clock starts when the headers have arrived (their own deadline:
app/api/header_timeout.py).

No timer per request: a wait for the body is recorded in a set, and one sweep, scheduled only
while some wait is pending, cancels those past their deadline (a timer per request cost about
as much as the rest of the middleware stack). A deadline is thus kept to within a quarter of
the timeout (at most a second) late, never early.
"""

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import RequestTimeout
from app.metrics import Metrics


class _Wait:
    """A task waiting for more of a body, and when it must stop."""

    __slots__ = ("deadline", "expired", "task")

    def __init__(self, deadline: float, task: "asyncio.Task[Any]") -> None:
        self.deadline = deadline
        self.task = task
        self.expired = False


class BodyTimeout:
    def __init__(self, app: ASGIApp, seconds: float, metrics: Metrics) -> None:
        self.app = app
        self.seconds = seconds
        self.sweep_interval = min(1.0, seconds / 4)
        self._timed_out = metrics.http_refused.labels("body_timeout")
        self._waits: set[_Wait] = set()
        self._sweep: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        complete = False
        started = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:  # after the body: the wait for a disconnect is not limited
                return await receive()
            task = asyncio.current_task()
            assert task is not None
            wait = _Wait(deadline, task)
            self._waits.add(wait)
            if self._sweep is None:
                self._sweep = loop.call_later(self.sweep_interval, self._expire, loop)
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not wait.expired:
                    raise
                task.uncancel()
                self._timed_out.inc()
                raise RequestTimeout(
                    f"the request body did not arrive within {self.seconds:g} seconds"
                ) from None
            finally:
                self._waits.discard(wait)
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except RequestTimeout as exc:
            # Raised where no handler renders it (a middleware reading the body): rendered here.
            if started:
                raise
            await error_response(exc)(scope, receive, send)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the waits past their deadline; sweep again while any is left."""
        now = loop.time()
        for wait in [w for w in self._waits if w.deadline <= now and not w.expired]:
            wait.expired = True
            wait.task.cancel()
        self._sweep = (
            loop.call_later(self.sweep_interval, self._expire, loop) if self._waits else None
        )
