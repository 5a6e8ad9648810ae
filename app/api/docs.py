"""GET /openapi.json and GET /docs, offline.

The schema adds one path per served model, ``POST /predict/<name>``, with that model's own
request model, so every model's exact fields are documented. Swagger UI 5 (it reads the OpenAPI
3.1 that FastAPI writes) is served from the installed swagger-ui-bundle-v2 package: no CDN.
"""

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from swagger_ui_bundle import swagger_ui_path

from app.api.api_keys import document_api_keys
from app.api.deps import RegistryDep, SettingsDep
from app.registry import Registry
from app.schemas import FEEDBACK_REQUEST

ASSETS_PATH = "/docs/assets"
ASSETS_DIR = str(swagger_ui_path)
REF = "#/components/schemas/"
# A prediction's id is what POST /feedback takes (clients, and the fuzzer's stateful phase,
# follow it from each model's 200 response).
FEEDBACK_LINK = {
    "operationRef": "#/paths/~1feedback/post",
    "description": "Send the ground truth of the first prediction.",
    "requestBody": {"prediction_id": "$response.body#/predictions/0/id"},
}

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
def openapi(request: Request, registry: RegistryDep, settings: SettingsDep) -> dict[str, Any]:
    schema = build_openapi(request.app, registry)
    document_api_keys(schema, bool(settings.api_key_secrets))
    return schema


@router.get("/docs")
def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Steward API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
    )


def build_openapi(app: FastAPI, registry: Registry) -> dict[str, Any]:
    """The app's routes, one path per served model, and exactly the schemas they reference."""
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    feedback = FEEDBACK_REQUEST.json_schema(ref_template=REF + "{model}")
    components.update(feedback.pop("$defs", {}))
    components["FeedbackRequest"] = feedback
    use_error_shape(schema)
    add_model_paths(schema, registry)
    drop_unused_schemas(schema)
    return schema


def use_error_shape(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 body of its own; our handlers render every error as ErrorResponse."""
    for node in _nodes(schema["paths"]):
        if node.get("$ref") == REF + "HTTPValidationError":
            node["$ref"] = REF + "ErrorResponse"


def add_model_paths(schema: dict[str, Any], registry: Registry) -> None:
    components = schema["components"]["schemas"]
    generic = schema["paths"]["/predict/{model}"]["post"]
    for name, model in registry.production().items():
        body, named = model_schemas(name, model.request_model)
        components.update(named)
        responses = dict(generic["responses"])
        responses["200"] = {**responses["200"], "links": {"feedback": FEEDBACK_LINK}}
        schema["paths"][f"/predict/{name}"] = {
            "post": {
                "tags": generic["tags"],
                "summary": f"Predict with {name} (v{model.version}, {model.metadata.task})",
                "operationId": f"predict_{name}",
                # ?version= and X-Steward-Key: everything but the path's model name
                "parameters": [p for p in generic["parameters"] if p["in"] != "path"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": REF + body}}},
                },
                "responses": responses,
            }
        }


def model_schemas(name: str, request_model: type[BaseModel]) -> tuple[str, dict[str, Any]]:
    """One model's request schema and the schemas it uses, each named ``<name>.<class name>``.

    Every model's classes are named alike (``Instance``, ``PredictRequest``); model names are
    unique, and their characters are valid in component names. The shared class names are
    dropped as titles too, so Swagger UI shows the component names.
    Returns the request schema's component name and every component by name.
    """
    prefix = f"{name}."
    body = request_model.model_json_schema(ref_template=REF + prefix + "{model}")
    title = body["title"]
    parts: dict[str, Any] = body.pop("$defs", {}) | {title: body}
    for part in parts.values():
        part.pop("title", None)
    return prefix + title, {prefix + key: part for key, part in parts.items()}


def drop_unused_schemas(schema: dict[str, Any]) -> None:
    """Keep only the components reachable from the paths (FastAPI lists some no route uses)."""
    components = schema["components"]["schemas"]
    used: set[str] = set()
    pending = _refs(schema["paths"])
    while pending:
        name = pending.pop().removeprefix(REF)
        if name not in used and name in components:
            used.add(name)
            pending += _refs(components[name])
    for name in set(components) - used:
        del components[name]


def _refs(node: Any) -> list[str]:
    return [ref for n in _nodes(node) if isinstance(ref := n.get("$ref"), str)]


def _nodes(node: Any) -> list[dict[str, Any]]:
    """Every JSON object in ``node``, itself included."""
    if isinstance(node, dict):
        return [node] + [found for value in node.values() for found in _nodes(value)]
    if isinstance(node, list):
        return [found for value in node for found in _nodes(value)]
    return []
