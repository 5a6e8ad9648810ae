"""The objects the lifespan builds, as one typed value that requests reach (app/api/deps.py)."""

from dataclasses import dataclass

from app.auto_rollback import AutoRollback
from app.drift_monitor import DriftMonitor
from app.feedback import FeedbackRecorder
from app.jobs import RetrainJobs
from app.metrics import Metrics
from app.prediction import Predictor
from app.readiness import Readiness
from app.registry import Registry
from app.settings import Settings
from app.store import PredictionLog, PredictionStore
from app.watcher import Watcher


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a request may need, built once per app in its lifespan (app/main.py)."""

    settings: Settings
    metrics: Metrics
    registry: Registry
    store: PredictionStore
    log: PredictionLog
    predictor: Predictor
    feedback: FeedbackRecorder
    readiness: Readiness
    watcher: Watcher
    jobs: RetrainJobs
    auto_rollback: AutoRollback
    drift: DriftMonitor
