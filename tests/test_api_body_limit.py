"""The body-size guard, as pure ASGI: declared lengths are checked before any route reads a byte.

Real servers refuse a malformed Content-Length themselves; the guard must not rely on it.
"""

import asyncio
import json
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message

from app.api.body_limit import BodySizeLimit


async def echo_length(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


APP = BodySizeLimit(Starlette(routes=[Route("/", echo_length, methods=["POST"])]), max_bytes=4)


def post(content_length: bytes, body: bytes) -> tuple[int, Any]:
    """Status and body of a POST straight into the ASGI app, with this raw Content-Length."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-length", content_length)],
        "server": ("test", 80),
        "client": ("test", 1),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(APP(scope, receive, send))
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    status: int = sent[0]["status"]
    return status, json.loads(content) if status != 200 else content.decode()


@pytest.mark.parametrize("declared", [b"abc", b"-1", b"1.0", b" 2", b"\xb2", b"1\xb2", b"\xd9\xa3"])
def test_a_length_that_is_not_ascii_digits_is_400(declared: bytes) -> None:
    """ "²" is a digit to str.isdigit(), and int() then fails: a 500 if it got that far."""
    status, body = post(declared, b"{}")
    assert status == 400
    assert body["error"]["code"] == "invalid_json"


def test_a_declared_length_over_the_limit_is_413() -> None:
    status, body = post(b"5", b"12345")
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"


def test_a_declared_length_within_the_limit_reaches_the_route() -> None:
    assert post(b"4", b"1234") == (200, "4")
