"""The HTTP wing: routers, error handlers, middleware and docs assets, installed on one app.

Thin adapters: each route translates HTTP, calls one function of the core, and maps the result.
The core (every module of ``app`` but this package and main.py) imports nothing from here, nor
FastAPI or Starlette.
"""

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount

from app.api import admin, docs, feedback, health, models, predict
from app.api.api_keys import ApiKeyMiddleware
from app.api.body_limit import BodySizeLimit
from app.api.body_timeout import BodyTimeout
from app.api.errors import install_error_handlers
from app.api.http_metrics import MetricsMiddleware
from app.api.overload import ConcurrencyLimit
from app.api.request_id import RequestIdMiddleware
from app.metrics import Metrics
from app.settings import Settings


def install(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Give ``app`` every route, the one error shape, the body limit, the API keys, the HTTP
    metrics and the request ids."""
    install_error_handlers(app, metrics)
    routers = (
        predict.router,
        feedback.router,
        models.router,
        admin.router,
        health.router,
        docs.router,
    )
    for router in routers:
        app.include_router(router)
    # /predict is served by plain routes, matched first; its FastAPI routes document it.
    app.router.routes[:0] = predict.routes
    assets = Mount(docs.ASSETS_PATH, StaticFiles(directory=docs.ASSETS_DIR), name="docs-assets")
    app.router.routes.append(assets)
    # Innermost first: a slot once the body has arrived, inside its size and time limits.
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrency, metrics=metrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyTimeout, seconds=settings.body_timeout_seconds, metrics=metrics)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_secrets)  # before any body
    # Outermost: sees every status. The routes flat (an app lists included routers as one
    # route each), for requests answered before routing.
    routes = [*predict.routes, *(route for router in routers for route in router.routes), assets]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    app.add_middleware(RequestIdMiddleware)  # outermost of ours: every response has the id
