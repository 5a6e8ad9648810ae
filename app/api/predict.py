"""POST /predict/{model} and POST /predict (the default model).

Served by plain Starlette routes (``routes``), installed ahead of the app's FastAPI routes:
FastAPI's routing and dependency solving cost about 75 µs a request (docs/performance.md).
``router`` keeps the FastAPI declaration of the same two operations, which is what /openapi.json
and /docs describe; a request never reaches it, since the plain route of its path matches first.
"""

from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Scope

from app import logs
from app.api.deps import DefaultModel, PredictorDep, ResolvedModel, VersionQuery, services
from app.prediction import PredictionResult
from app.schemas import ErrorResponse, PredictResponse

router = APIRouter(tags=["predict"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PredictResponse, "description": "One prediction per instance, in order."},
    400: {"model": ErrorResponse, "description": "The body is not JSON."},
    404: {"model": ErrorResponse, "description": "Unknown model or version."},
    413: {"model": ErrorResponse, "description": "The body is over the size limit."},
    422: {
        "model": ErrorResponse,
        "description": "An instance does not fit the model's schema (`validation_error`), or "
        "the model cannot score it (`unscorable_input`).",
    },
    500: {"model": ErrorResponse, "description": "The model is broken (`model_failure`)."},
    503: {
        "model": ErrorResponse,
        "description": "The model's version was refused at load, or the prediction store is "
        "down and the log is full.",
    },
}
BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "The model's own request schema: see POST /predict/<name> per model.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
# ?version= checked as FastAPI checks it for the documented operation, with the same errors.
_VERSION: TypeAdapter[str | None] = TypeAdapter(VersionQuery)


def _json(result: PredictionResult) -> Response:
    """The result as the documented PredictResponse, encoded by orjson: 16 us for 64 rows,
    where building the pydantic models and dumping them takes 133 us (docs/performance.md)."""
    logs.note(model=result.model, version=result.version, rows=len(result.ids))
    body = orjson.dumps(
        {
            "model": result.model,
            "version": result.version,
            "predictions": [
                {"id": i, "prediction": label}
                if probabilities is None
                else {"id": i, "prediction": label, "probabilities": probabilities}
                for i, (label, probabilities) in zip(result.ids, result.outputs, strict=True)
            ],
        }
    )
    return Response(body, media_type="application/json")


async def _serve(request: Request, name: str | None) -> Response:
    """Resolve, predict, encode: what the documented operations below declare."""
    version = request.query_params.get("version")  # the last one, as FastAPI takes it
    if version is not None:
        try:
            _VERSION.validate_python(version)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("query", "version", *e["loc"])} for e in exc.errors()]
            ) from exc
    predictor = services(request).predictor
    model = await predictor.resolve(name, version, request.headers.get("x-steward-key"))
    return _json(await predictor.predict(model, await request.body()))


async def _predict(request: Request) -> Response:
    return await _serve(request, request.path_params["model"])


async def _predict_default(request: Request) -> Response:
    return await _serve(request, None)


class _PlainRoute(Route):
    """A Starlette route that names itself in the scope, as FastAPI's routes do (the HTTP
    metrics label requests by ``scope["route"]``'s path template)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


routes = [
    _PlainRoute("/predict/{model}", _predict, methods=["POST"]),
    _PlainRoute("/predict", _predict_default, methods=["POST"]),
]


@router.post("/predict/{model}", response_model=None, responses=RESPONSES, openapi_extra=BODY_DOC)
async def predict(model: ResolvedModel, request: Request, predictor: PredictorDep) -> Response:
    """Predict with a model: one prediction (with an id for /feedback) per instance."""
    return _json(await predictor.predict(model, await request.body()))


@router.post("/predict", response_model=None, responses=RESPONSES, openapi_extra=BODY_DOC)
async def predict_default(
    model: DefaultModel, request: Request, predictor: PredictorDep
) -> Response:
    """Predict with the default model."""
    return _json(await predictor.predict(model, await request.body()))
