"""GET /openapi.json and GET /docs, offline.

The schema adds one path per served model, ``POST /predict/<name>``, with that model's own
request model, so every model's exact fields are documented. Swagger UI's assets are served
from the installed swagger-ui-bundle package: no CDN.
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from app.registry import Registry
from app.routes.deps import RegistryDep
from app.schemas import FEEDBACK_REQUEST

ASSETS_PATH = "/docs/assets"
ASSETS_DIR = str(swagger_ui_path)

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
def openapi(request: Request, registry: RegistryDep) -> dict[str, Any]:
    app = request.app
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    feedback = FEEDBACK_REQUEST.json_schema(ref_template="#/components/schemas/{model}")
    components.update(feedback.pop("$defs", {}))
    components["FeedbackRequest"] = feedback
    add_model_paths(schema, registry)
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


def add_model_paths(schema: dict[str, Any], registry: Registry) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    generic = schema["paths"]["/predict/{model}"]["post"]
    for name in registry.names:
        model = next(
            (
                m
                for m in registry.loaded_versions(name)
                if m.version == registry.aliases(name).get("production")
            ),
            None,
        )
        if model is None:
            continue
        body = model.request_model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[body["title"]] = body
        schema["paths"][f"/predict/{name}"] = {
            "post": {
                "tags": ["models"],
                "summary": f"Predict with {name} (v{model.version}, {model.metadata.task})",
                "operationId": f"predict_{name}",
                "parameters": [p for p in generic["parameters"] if p["name"] == "version"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{body['title']}"}
                        }
                    },
                },
                "responses": generic["responses"],
            }
        }
