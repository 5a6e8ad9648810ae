"""uvicorn's HTTP protocol with a deadline for request headers (``STEWARD_HEADER_TIMEOUT_SECONDS``).

uvicorn times out only an idle kept-alive connection: a client that sends half its headers and
stalls (or sends them a byte at a time) holds its connection for ever, and enough of them use
up the process's file descriptors. Here the headers of each request must arrive whole within
the timeout of the connection opening, or of the request's first byte; if not, the client gets a
408 in the one error shape and the connection closes. The body has its own deadline once the
headers are in (app/api/body_timeout.py).

Built on uvicorn's httptools protocol (uvicorn[standard], what it picks by default): given to
``uvicorn.run(http=...)`` by ``steward serve``.
"""

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.errors import error_payload


def _timeout_response(seconds: float) -> bytes:
    body = orjson.dumps(
        error_payload(
            "request_timeout", f"the request headers did not arrive within {seconds:g} seconds"
        )
    )
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing connections whose request headers take over
    ``seconds``."""
    response = _timeout_response(seconds)

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _seen: RequestResponseCycle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._seen:  # a request's headers are complete
                self._seen = self.cycle
                self._disarm()
            elif self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a next request

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return HeaderTimeoutProtocol
