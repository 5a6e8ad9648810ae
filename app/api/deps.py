"""Named dependencies: the objects the lifespan built, reached through request state."""

from typing import Annotated, Any

from fastapi import Depends, Request

from app.feedback import FeedbackRecorder
from app.metrics import Metrics
from app.prediction import Predictor
from app.readiness import Readiness
from app.registry import Registry


def _from_state(name: str) -> Any:
    """A dependency returning the lifespan object stored under ``name``."""

    async def dependency(request: Request) -> Any:  # async: a sync one runs in a thread
        return getattr(request.state, name)

    return Depends(dependency)


RegistryDep = Annotated[Registry, _from_state("registry")]
PredictorDep = Annotated[Predictor, _from_state("predictor")]
FeedbackDep = Annotated[FeedbackRecorder, _from_state("feedback")]
MetricsDep = Annotated[Metrics, _from_state("metrics")]
ReadinessDep = Annotated[Readiness, _from_state("readiness")]
