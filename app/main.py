"""create_app(settings): the one place that wires the service together.

Serve with ``uvicorn --factory app.main:create_app`` (settings from STEWARD_* variables) or
``steward serve``.
"""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio.to_thread
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app import __version__, api
from app.artifact_formats import ArtifactPolicy
from app.auto_rollback import AutoRollback
from app.drift_monitor import DriftMonitor
from app.errors import InvalidSettings
from app.feedback import FeedbackRecorder
from app.jobs import RetrainJobs
from app.late_predictions import LateRows
from app.metrics import Metrics
from app.prediction import Predictor, scores_typical_row
from app.readiness import Readiness
from app.registry import Registry
from app.services import Services
from app.settings import Settings, load_settings
from app.store import PredictionLog, open_configured_store
from app.store.retention import Retention
from app.watcher import Watcher


@dataclass
class Shutdown:
    """What the app's shutdown left behind; ``steward serve`` makes it the exit status."""

    done: bool = False  # the shutdown reached its end: the prediction log was closed
    unwritten_rows: int = 0  # acknowledged predictions the log could not write in time


def create_app(settings: Settings | None = None, shutdown: Shutdown | None = None) -> FastAPI:
    """The app; ``shutdown``, when given, is filled in when the app shuts down."""
    settings = settings or load_settings()
    if not settings.models_dir.is_dir():  # a typo here would serve nothing, and say nothing
        raise InvalidSettings(
            f"STEWARD_MODELS_DIR (or --models-dir): no directory at {settings.models_dir} "
            "(train a model into it first, e.g. `steward train demo`)"
        )
    # Built here, not in the lifespan, because the middleware needs it when the app is built.
    metrics = Metrics(
        CollectorRegistry(),
        settings.max_class_labels,
        drift_feature_labels=settings.drift_feature_labels,
        drift_top_features=settings.drift_top_features,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        store = open_configured_store(settings)
        registry = Registry(
            settings.models_dir,
            settings.max_instances,
            input_range_multiple=settings.input_range_multiple,
            target_range_multiple=settings.target_range_multiple,
            warm_up=scores_typical_row,
            twins=settings.twins,
            policy=ArtifactPolicy.of(settings),
        )
        metrics.follow(registry)
        drift = DriftMonitor(settings, metrics.drift)
        drift.follow(registry)
        registry.load()
        log = PredictionLog(
            store,
            metrics,
            batch_size=settings.log_batch_size,
            max_pending=settings.log_max_pending,
            flush_interval=settings.log_flush_interval_seconds,
        )
        log.start()
        predictor = Predictor(
            registry,
            log,
            metrics,
            settings.default_model,
            batch_max_rows=settings.batch_max_rows,
            batch_max_wait=settings.batch_max_wait_seconds,
            batch_inline_max=settings.batch_inline_max_seconds,
            log_wait=settings.log_wait_seconds,
            shadow_max_pending_rows=settings.shadow_max_pending_rows,
            shadow_window=settings.shadow_window_seconds,
            drift=drift,
        )
        watcher = Watcher(registry, settings.reload_interval_seconds)
        services = Services(
            settings=settings,
            metrics=metrics,
            registry=registry,
            store=store,
            log=log,
            predictor=predictor,
            feedback=FeedbackRecorder(
                registry,
                store,
                log,
                metrics,
                settings.max_feedback_items,
                settings.target_range_multiple,
                predictor.shadows,
                settings.shadow_wait_seconds,
                LateRows.for_settings(store, settings),
            ),
            readiness=Readiness(registry, store, log, settings.required_models),
            watcher=watcher,
            jobs=RetrainJobs(settings),
            auto_rollback=AutoRollback(settings, store, metrics, watcher.scan),
            drift=drift,
        )
        # Everything loaded so far (modules, models) lives as long as the process: take it out
        # of the collector's full scans, which otherwise pause the loop ~100 ms under load.
        gc.freeze()
        services.watcher.start()
        services.auto_rollback.start()
        drift.start()
        retention = Retention(settings, store, metrics)
        retention.start()
        try:
            yield {"services": services}  # requests reach it through app/api/deps.py
        finally:
            await retention.close()
            await drift.close()
            await services.auto_rollback.close()
            await services.watcher.close()  # no swap while the rest shuts down
            await services.jobs.close()  # running retrainings terminated, their jobs failed
            await predictor.close()
            unwritten = await anyio.to_thread.run_sync(log.close, settings.shutdown_timeout_seconds)
            store.close()
            gc.unfreeze()
            if shutdown is not None:
                shutdown.done, shutdown.unwritten_rows = True, unwritten

    app = FastAPI(
        title="Steward",
        version=__version__,
        description="Serves scikit-learn models and knows whether they are right.",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    api.install(app, settings, metrics)
    return app
