"""Pure-ASGI guard: request bodies over the configured size get 413 before any route reads them."""

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import InvalidJSON, PayloadTooLarge, StewardError


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):  # "²".isdigit() too
                await self._refuse(
                    InvalidJSON("invalid Content-Length header"), scope, receive, send
                )
            elif int(declared) > self.max_bytes:
                await self._refuse(self._too_large(), scope, receive, send)
            else:  # the server reads exactly the declared length
                await self.app(scope, receive, send)
            return
        # No declared length (chunked): read it here, up to the limit, then replay it.
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(self._too_large(), scope, receive, send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.max_bytes} bytes")

    @staticmethod
    async def _refuse(error: StewardError, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(error)(scope, receive, send)
