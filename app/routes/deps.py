"""Named dependencies: the lifespan's objects, reached through request state."""

from typing import Annotated, Any

from fastapi import Depends, Request

from app.feedback import FeedbackRecorder
from app.metrics import Metrics
from app.prediction import Predictor
from app.registry import Registry
from app.settings import Settings
from app.store import PredictionLog, PredictionStore


def _state(request: Request, name: str) -> Any:
    return getattr(request.state, name)


def get_settings(request: Request) -> Settings:
    settings: Settings = _state(request, "settings")
    return settings


def get_registry(request: Request) -> Registry:
    registry: Registry = _state(request, "registry")
    return registry


def get_predictor(request: Request) -> Predictor:
    predictor: Predictor = _state(request, "predictor")
    return predictor


def get_feedback(request: Request) -> FeedbackRecorder:
    recorder: FeedbackRecorder = _state(request, "feedback")
    return recorder


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = _state(request, "metrics")
    return metrics


def get_store(request: Request) -> PredictionStore:
    store: PredictionStore = _state(request, "store")
    return store


def get_log(request: Request) -> PredictionLog:
    log: PredictionLog = _state(request, "log")
    return log


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
FeedbackDep = Annotated[FeedbackRecorder, Depends(get_feedback)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
StoreDep = Annotated[PredictionStore, Depends(get_store)]
LogDep = Annotated[PredictionLog, Depends(get_log)]
