"""Named dependencies: the services the lifespan built, and the model a predict request names.

Every one reaches the lifespan's ``Services`` through ``services(request)``, the one typed way
in. They call it rather than depend on it: FastAPI solves a shared sub-dependency again for each
dependency that uses it (cached or not), about 10 µs a request each on /predict.
"""

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from app.drift_monitor import DriftMonitor
from app.feedback import FeedbackRecorder
from app.loading import LoadedModel
from app.metrics import Metrics
from app.prediction import Predictor
from app.readiness import Readiness
from app.registry import Registry
from app.services import Services
from app.settings import Settings
from app.store import PredictionStore

VersionQuery = Annotated[
    str | None,
    Query(max_length=32, description="A version number or an alias; default: production."),
]


def services(request: Request) -> Services:
    """The services of the app serving ``request`` (its lifespan state)."""
    built: Services = request.state.services
    return built


# Async, every one: FastAPI runs a sync dependency in the thread pool.


async def _registry(request: Request) -> Registry:
    return services(request).registry


async def _predictor(request: Request) -> Predictor:
    return services(request).predictor


async def _feedback(request: Request) -> FeedbackRecorder:
    return services(request).feedback


async def _metrics(request: Request) -> Metrics:
    return services(request).metrics


async def _readiness(request: Request) -> Readiness:
    return services(request).readiness


async def _store(request: Request) -> PredictionStore:
    return services(request).store


async def _settings(request: Request) -> Settings:
    return services(request).settings


async def _drift(request: Request) -> DriftMonitor:
    return services(request).drift


KeyHeader = Annotated[
    str | None,
    Header(
        alias="X-Steward-Key",
        description="Under a canary traffic policy, requests with the same key are answered "
        "by the same version (a user or session id, say); without it, each request is drawn. "
        "Any length (the server's header limit applies); sent twice, the first counts.",
    ),
]


async def _resolved_model(
    model: str, request: Request, version: VersionQuery = None, key: KeyHeader = None
) -> LoadedModel:
    """The version of the path's model that ``?version=`` names, else the one its traffic
    policy picks: UnknownModel, UnknownVersion or ModelUnavailable if there is none to serve."""
    return await services(request).predictor.resolve(model, version, key)


async def _default_model(
    request: Request, version: VersionQuery = None, key: KeyHeader = None
) -> LoadedModel:
    """The same for the default model (POST /predict)."""
    return await services(request).predictor.resolve(None, version, key)


RegistryDep = Annotated[Registry, Depends(_registry)]
PredictorDep = Annotated[Predictor, Depends(_predictor)]
FeedbackDep = Annotated[FeedbackRecorder, Depends(_feedback)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
ReadinessDep = Annotated[Readiness, Depends(_readiness)]
StoreDep = Annotated[PredictionStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
DriftDep = Annotated[DriftMonitor, Depends(_drift)]
ResolvedModel = Annotated[LoadedModel, Depends(_resolved_model)]
DefaultModel = Annotated[LoadedModel, Depends(_default_model)]
