"""Optional API keys of /predict and /feedback (STEWARD_API_KEYS or STEWARD_API_KEYS_FILE).

Pure-ASGI middleware, so that the plain /predict routes and FastAPI's /feedback are guarded by
one check, before routing: an unknown model is 401 like a known one, and no body is read for a
client without a key. A client sends its key as ``X-API-Key: <key>`` or
``Authorization: Bearer <key>`` (``X-API-Key`` is read first). It is compared with every
configured key in constant time: SHA-256 digests of one length, every key compared whatever the
outcome. No key configured: nothing is checked. The admin token is separate: it opens /admin
only (app/api/admin.py), and an API key never does.
"""

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.api.paths import client_route, route_path
from app.errors import Unauthorized

HEADER_SCHEME = "ApiKeyHeader"  # names in /openapi.json; the admin token's is HTTPBearer
BEARER_SCHEME = "ApiKeyBearer"
_WHERE = "send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
_SCHEMES = {
    HEADER_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key (STEWARD_API_KEYS or STEWARD_API_KEYS_FILE).",
    },
    BEARER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key as a bearer token (the same keys as X-API-Key).",
    },
}
_UNAUTHORIZED = {"description": "No API key, or a wrong one.", "content": {}}


class ApiKeyMiddleware:
    """401 ``unauthorized`` (with ``WWW-Authenticate``) for a guarded path without a valid key."""

    def __init__(self, app: ASGIApp, keys: Sequence[SecretStr]) -> None:
        self.app = app
        self._digests = tuple(_digest(key.get_secret_value()) for key in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._digests and scope["type"] == "http" and client_route(route_path(scope)):
            refusal = self._refusal(Headers(scope=scope))
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: Headers) -> Unauthorized | None:
        given = headers.get("x-api-key")
        if given is None:
            scheme, _, credentials = headers.get("authorization", "").partition(" ")
            given = credentials.strip() if scheme.lower() == "bearer" else None
        if not given:
            return Unauthorized(f"missing API key: {_WHERE}")
        digest = _digest(given)
        matched = False
        for expected in self._digests:  # every one, whatever the outcome
            matched |= hmac.compare_digest(digest, expected)
        return None if matched else Unauthorized(f"wrong API key: {_WHERE}")


def _digest(key: str) -> bytes:
    # Header values are latin-1 (Starlette decodes them so): any byte maps to one character.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def document_api_keys(schema: dict[str, Any], enabled: bool) -> None:
    """With keys configured, /openapi.json names the two schemes on every guarded operation
    (a list of requirements is read as alternatives: either one is enough), and their 401."""
    if not enabled:
        return
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(_SCHEMES)
    for path, item in schema["paths"].items():
        if not client_route(path):
            continue
        for operation in item.values():
            if isinstance(operation, dict):
                operation["security"] = [{HEADER_SCHEME: []}, {BEARER_SCHEME: []}]
                responses = operation.setdefault("responses", {})
                error = responses.get("422", responses.get("400", _UNAUTHORIZED))
                responses.setdefault("401", {**error, "description": _UNAUTHORIZED["description"]})
