"""Pure-ASGI guard: a request body must arrive whole within ``STEWARD_BODY_TIMEOUT_SECONDS`` of
its headers, or the request gets 408 ``request_timeout`` and its connection is closed.

Without it a client sending one byte a second keeps a request (and whatever it holds) open for
as long as it likes. The clock starts when the headers have arrived: uvicorn has no timeout for
headers that never end (docs/operations.md, "Overload and start-up problems").
"""

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import RequestTimeout
from app.metrics import Metrics


class BodyTimeout:
    def __init__(self, app: ASGIApp, seconds: float, metrics: Metrics) -> None:
        self.app = app
        self.seconds = seconds
        self._timed_out = metrics.http_refused.labels("body_timeout")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.seconds
        complete = False
        started = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:  # after the body: the wait for a disconnect is not limited
                return await receive()
            try:
                with anyio.fail_after(deadline - anyio.current_time()):
                    message = await receive()
            except TimeoutError:
                self._timed_out.inc()
                raise RequestTimeout(
                    f"the request body did not arrive within {self.seconds:g} seconds"
                ) from None
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
