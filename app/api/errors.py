"""The exception handlers: every error, FastAPI's and Starlette's included, in one JSON shape.

A StewardError is counted here, once, under its model and stage (``steward_errors_total``): the
core raises errors and never counts them. Refusals made before a route runs (FastAPI's checks of
query parameters, the body-size limit, unknown routes and methods) show in the HTTP metrics only.
"""

import logging

from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from app import logs
from app.errors import ClientClosedRequest, StewardError, error_payload, validation_error
from app.metrics import Metrics

logger = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
# FastAPI's own 400: a body parameter's JSON it could not decode (invalid UTF-8, a number of
# more digits than Python reads): the code /predict and /feedback give the same bodies.
_HTTP_400 = ("invalid_json", "the body is not JSON this server can read")


def error_response(error: StewardError) -> JSONResponse:
    return JSONResponse(
        error.payload(), status_code=error.status_code, headers=error.headers or None
    )


def install_error_handlers(app: Starlette, metrics: Metrics) -> None:
    """Render every error, including FastAPI's validation errors and 404/405, in one shape."""

    async def steward_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StewardError)
        metrics.count_error(exc.model, exc.stage)
        return error_response(exc)

    app.add_exception_handler(StewardError, steward_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected_error)


async def _request_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc.errors(), skip=("body",)))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        code, message = _HTTP_400
    else:
        code, message = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}"), str(exc.detail)
    return JSONResponse(
        error_payload(code, message), status_code=exc.status_code, headers=exc.headers
    )


async def _client_disconnect(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientDisconnect)
    return error_response(ClientClosedRequest("the client closed the connection"))


async def _unexpected_error(_: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", exc_info=exc)
    response = error_response(StewardError("internal server error"))
    # Rendered by Starlette's outermost middleware, outside the one that sets this header.
    request_id = logs.current_request_id()
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    return response
