"""Every Prometheus collector of the service, on one injected registry, and its domain events
(the shadow ones in app/shadow_metrics.py, reached as ``metrics.shadow``; the drift ones in
app/drift_metrics.py, as ``metrics.drift``).

Label values are bounded: route templates (never raw paths), model names and versions from the
registry (an unknown model is ``_unknown``), and at most ``max_class_labels`` class labels per
model (the rest share ``_other``). docs/metrics.md lists each metric with its PromQL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.aliases import TrafficPolicy
from app.artifacts import Label, ModelMetadata
from app.drift_metrics import DriftMetrics
from app.errors import Stage
from app.multiprocess_metrics import remove_series
from app.shadow_metrics import ShadowMetrics

if TYPE_CHECKING:  # metrics, store and registry sit side by side: no import at run time
    from app.loading import LoadedModel, Refusal
    from app.model_entry import ModelEntry
    from app.registry import Registry

UNKNOWN_MODEL = "_unknown"
OTHER_CLASS = "_other"
ERROR_STAGES: tuple[Stage, ...] = get_args(Stage)
TWIN_FALLBACK_REASONS = ("out_of_range", "error", "unusable")
CLASSIFIER_OUTCOMES = ("correct", "incorrect", "duplicate", "conflict", "invalid")
REGRESSOR_OUTCOMES = ("labelled", "duplicate", "conflict", "invalid")
AdminAction = Literal["promote", "rollback", "traffic", "reload", "retrain", "job", "auto_rollback"]
AdminOutcome = Literal["ok", "denied", "error"]
"""An admin call's outcome: done, refused for its token (401/403), or any other error."""
ADMIN_ACTIONS: tuple[AdminAction, ...] = get_args(AdminAction)
ADMIN_OUTCOMES: tuple[AdminOutcome, ...] = get_args(AdminOutcome)
HttpRefusal = Literal["overloaded", "body_timeout"]
"""Why a request was refused before any route served it (app/api/overload.py,
app/api/body_timeout.py): over the concurrency limit, or a body slower than its timeout."""
HTTP_REFUSALS: tuple[HttpRefusal, ...] = get_args(HttpRefusal)
RollbackReason = Literal["manual", "accuracy_drop", "mae_rise"]
"""Why production was rolled back: over the admin API, or automatically (app/auto_rollback.py)
for a classifier's accuracy or a regressor's MAE worse than the version before's."""

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ABSOLUTE_ERROR_BUCKETS = (
    0.001, 0.01, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
    10000.0,
)  # fmt: skip


class Metrics:
    """The service's collectors and the few domain events that update them."""

    def __init__(
        self,
        registry: CollectorRegistry,
        max_class_labels: int = 25,
        *,
        drift_feature_labels: int = 50,
        drift_top_features: int = 10,
    ) -> None:
        self.registry = registry
        self.max_class_labels = max_class_labels
        self.http_requests = Counter(
            "steward_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "steward_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.http_refused = Counter(
            "steward_http_refused_requests",
            "Requests refused before a route served them, by reason: overloaded (503, over "
            "STEWARD_MAX_CONCURRENCY) or body_timeout (408, body slower than "
            "STEWARD_BODY_TIMEOUT_SECONDS).",
            ["reason"],
            registry=registry,
        )
        for refusal in HTTP_REFUSALS:
            self.http_refused.labels(refusal)
        self.inference_duration = Histogram(
            "steward_model_inference_duration_seconds",
            "Time of one model call (one batch: the rows of one or more requests) "
            "by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "steward_model_batch_rows",
            "Rows per model call by model and version (adaptive batching joins requests).",
            ["model", "version"],
            buckets=BATCH_ROW_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "steward_predictions",
            "Predicted rows by model and version.",
            ["model", "version"],
            registry=registry,
        )
        self.predicted_classes = Counter(
            "steward_predicted_classes",
            "Predicted rows of classifiers by model, version and predicted class.",
            ["model", "version", "class"],
            registry=registry,
        )
        self.errors = Counter(
            "steward_errors",
            "Errors by model and stage: " + ", ".join(ERROR_STAGES) + ".",
            ["model", "stage"],
            registry=registry,
        )
        self.feedback = Counter(
            "steward_feedback",
            "Feedback items by model, version and outcome: "
            + ", ".join(dict.fromkeys(CLASSIFIER_OUTCOMES + REGRESSOR_OUTCOMES))
            + ".",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.confusion = Counter(
            "steward_feedback_confusion",
            "Labelled predictions of classifiers by predicted and actual class "
            "(correct: whether they are the same class).",
            ["model", "version", "predicted", "actual", "correct"],
            registry=registry,
        )
        self.absolute_error = Histogram(
            "steward_feedback_absolute_error",
            "Absolute error |prediction - ground truth| of labelled regressor predictions.",
            ["model", "version"],
            buckets=ABSOLUTE_ERROR_BUCKETS,
            registry=registry,
        )
        self.squared_error = Counter(
            "steward_feedback_squared_error",
            "Sum of squared errors of labelled regressor predictions (for RMSE).",
            ["model", "version"],
            registry=registry,
        )
        self.shadow = ShadowMetrics(registry)
        self.drift = DriftMetrics(registry, drift_feature_labels, drift_top_features)
        self.model_info = Gauge(
            "steward_model_info",
            "1 for each served model version and alias.",
            ["model", "version", "alias"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.model_refused = Gauge(
            "steward_model_refused",
            "1 for each model with a refused version (or aliases file), by reason.",
            ["model", "reason"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.sklearn_mismatch = Gauge(
            "steward_model_sklearn_version_mismatch",
            "1 when a loaded version was saved with another scikit-learn than the one running.",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.runtime = Gauge(
            "steward_model_runtime",
            "1 per loaded version, naming what it serves on: its compiled twin (onnxruntime, "
            "treelite; fallback none) or sklearn, with the fallback's reason.",
            ["model", "version", "runtime", "fallback"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.twin_fallbacks = Counter(
            "steward_twin_fallback_rows",
            "Rows of a version served by its compiled twin's estimator instead: out_of_range "
            "(a value outside its feature's training range, where the twin was not proven), "
            "error (the twin failed), unusable (the twin answered a non-finite number).",
            ["model", "version", "reason"],
            registry=registry,
        )
        self.traffic_percent = Gauge(
            "steward_model_traffic_percent",
            "Per model, the percent of requests its traffic policy sends to the candidate, under "
            "the policy's mode (shadow, canary; none: 0). The configured share, whether or not "
            "it applies now (GET /models/{model} says).",
            ["model", "mode"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.log_pending = Gauge(
            "steward_prediction_log_pending_rows",
            "Acknowledged predictions not yet written to the store.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.log_written = Counter(
            "steward_prediction_log_written_rows",
            "Predictions written to the store.",
            registry=registry,
        )
        self.log_rejected = Counter(
            "steward_prediction_log_rejected_rows",
            "Acknowledged predictions the store refused while it worked: quarantined, not retried.",
            registry=registry,
        )
        self.retention_deleted = Counter(
            "steward_retention_deleted_rows",
            "Rows the prediction-log retention deleted, by table (predictions, "
            "shadow_predictions, prediction_quarantine).",
            ["table"],
            registry=registry,
        )
        for table in ("predictions", "shadow_predictions", "prediction_quarantine"):
            self.retention_deleted.labels(table)
        self.log_dropped = Counter(
            "steward_prediction_log_dropped_rows",
            "Acknowledged predictions never written: still pending when the log closed (the "
            "store stayed down through the shutdown's drain).",
            registry=registry,
        )
        self.admin_actions = Counter(
            "steward_admin_actions",
            "Admin API calls by action ("
            + ", ".join(ADMIN_ACTIONS)
            + ") and outcome ("
            + ", ".join(ADMIN_OUTCOMES)
            + ").",
            ["action", "outcome"],
            registry=registry,
        )
        for action in ADMIN_ACTIONS:
            for outcome in ADMIN_OUTCOMES:
                self.admin_actions.labels(action, outcome)
        self.rollbacks = Counter(
            "steward_rollbacks",
            "Production roll-backs this server made, by model and reason: manual (the admin "
            "API), accuracy_drop or mae_rise (automatic rollback). `steward rollback` runs "
            "outside any server: not counted.",
            ["model", "reason"],
            registry=registry,
        )
        self._class_labels: dict[tuple[str, int], dict[Label, str]] = {}
        self._series: dict[tuple[str, int], ModelSeries] = {}
        self._info: dict[tuple[str, int], tuple[str, ...]] = {}  # model_info series published
        self._errors: dict[tuple[str, str], Counter] = {}
        for stage in ERROR_STAGES:
            self.errors.labels(UNKNOWN_MODEL, stage)

    def class_label(self, metadata: ModelMetadata, label: Label) -> str:
        """The metric label of a class: itself for the first classes, ``_other`` beyond."""
        labels = self._class_labels.get((metadata.name, metadata.version))
        if labels is None:
            classes = metadata.classes or []
            labels = {
                c: str(c) if i < self.max_class_labels else OTHER_CLASS
                for i, c in enumerate(classes)
            }
            self._class_labels[(metadata.name, metadata.version)] = labels
        return labels.get(label, OTHER_CLASS)

    def follow(self, registry: Registry) -> None:
        """Keep the model series in step with ``registry``: subscribe to its hooks."""
        registry.on_load.append(self._loaded)
        registry.on_swap.append(self._swapped)
        registry.on_refuse.append(self._refused)
        registry.on_clear.append(self._cleared)
        registry.on_unload.append(self._unloaded)
        registry.on_traffic.append(self._traffic)

    def _loaded(self, entry: ModelEntry, model: LoadedModel) -> None:
        """A version is loaded: publish its info and create its series at 0."""
        metadata = model.metadata
        name, version = metadata.name, str(metadata.version)
        self._publish_info(entry, model.version)
        self.sklearn_mismatch.labels(name, version).set(int(model.sklearn_mismatch is not None))
        self.runtime.labels(name, version, *_runtime_labels(model)).set(1)
        if model.twin is not None:
            for reason in TWIN_FALLBACK_REASONS:
                self.twin_fallbacks.labels(name, version, reason)
        self.predictions.labels(name, version)
        self.inference_duration.labels(name, version)
        self.batch_rows.labels(name, version)
        for stage in ERROR_STAGES:
            self.errors.labels(name, stage)
        outcomes: tuple[str, ...]
        if metadata.task == "classification":
            outcomes = CLASSIFIER_OUTCOMES
            labels = sorted({self.class_label(metadata, c) for c in metadata.classes or ()})
            for predicted in labels:
                self.predicted_classes.labels(name, version, predicted)
                for actual in labels:
                    flags: tuple[str, ...]
                    if predicted != actual:
                        flags = ("false",)
                    else:  # two classes sharing `_other` can be told apart only when wrong
                        flags = ("true", "false") if predicted == OTHER_CLASS else ("true",)
                    for flag in flags:
                        self.confusion.labels(name, version, predicted, actual, flag)
        else:
            outcomes = REGRESSOR_OUTCOMES
            self.absolute_error.labels(name, version)
            self.squared_error.labels(name, version)
        for outcome in outcomes:
            self.feedback.labels(name, version, outcome)
        automatic = "accuracy_drop" if metadata.task == "classification" else "mae_rise"
        for reason in ("manual", automatic):
            self.rollbacks.labels(name, reason)
        self.shadow.loaded(metadata)

    def _swapped(self, entry: ModelEntry, alias: str, old: int | None, new: int | None) -> None:
        """An alias moved (or went): from the old version's info series to the new one's."""
        for version in (old, new):
            if version is not None:
                self._publish_info(entry, version)

    def _refused(self, entry: ModelEntry, refusal: Refusal) -> None:
        self.model_refused.labels(entry.name, refusal.reason).set(1)

    def _cleared(self, entry: ModelEntry, refusal: Refusal) -> None:
        """A refusal went (the aliases file was fixed): its series goes, unless another refusal
        of the model has the same reason."""
        if all(r.reason != refusal.reason for r in entry.state.refusals.values()):
            remove_series(self.model_refused, entry.name, refusal.reason)

    def _unloaded(self, entry: ModelEntry, model: LoadedModel) -> None:
        """A version left memory: its gauges go. Its counters stay (what it served is history,
        and rate() needs them), and so do its class labels (feedback for its predictions)."""
        self._publish_info(entry, model.version)
        remove_series(self.sklearn_mismatch, model.name, str(model.version))
        remove_series(self.runtime, model.name, str(model.version), *_runtime_labels(model))
        self._series.pop((model.name, model.version), None)

    def _traffic(self, entry: ModelEntry, old: TrafficPolicy | None, new: TrafficPolicy) -> None:
        """One series per model, under its current mode: the old mode's goes."""
        if old is not None and old.mode != new.mode:
            remove_series(self.traffic_percent, entry.name, old.mode)
        self.traffic_percent.labels(entry.name, new.mode).set(
            0.0 if new.mode == "none" else new.percent
        )

    def _publish_info(self, entry: ModelEntry, version: int) -> None:
        """``steward_model_info`` of one version as the entry has it now: a series per alias
        pointing at it, ``alias=""`` while it is loaded with none, no series once unloaded."""
        state = entry.state
        aliases: tuple[str, ...] = ()
        if version in state.loaded:
            aliases = tuple(state.aliases_of(version)) or ("",)
        key = (entry.name, version)
        for alias in set(self._info.pop(key, ())) - set(aliases):
            remove_series(self.model_info, entry.name, str(version), alias)
        for alias in aliases:
            self.model_info.labels(entry.name, str(version), alias).set(1)
        if aliases:
            self._info[key] = aliases

    def count_admin(self, action: AdminAction, outcome: AdminOutcome) -> None:
        self.admin_actions.labels(action, outcome).inc()

    def count_rollback(self, model: str, reason: RollbackReason) -> None:
        self.rollbacks.labels(model, reason).inc()

    def count_error(self, model: str | None, stage: Stage | None) -> None:
        """One error of ``model`` (None: ``_unknown``) at ``stage``; an error with no stage
        (a conflict, a refusal counted as a feedback outcome) is not counted."""
        if stage is None:
            return
        key = (model or UNKNOWN_MODEL, stage)
        child = self._errors.get(key)
        if child is None:
            child = self._errors[key] = self.errors.labels(*key)
        child.inc()

    def count_twin_fallback(self, model: LoadedModel, reason: str, rows: int) -> None:
        """Rows of ``model`` its twin left to the estimator (app/prediction.py ``infer``)."""
        self.twin_fallbacks.labels(model.name, str(model.version), reason).inc(rows)

    def series(self, metadata: ModelMetadata) -> ModelSeries:
        """The served version's label children, made once: requests do no label lookups."""
        key = (metadata.name, metadata.version)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ModelSeries(self, metadata)
        return series

    def observe_feedback(
        self,
        metadata: ModelMetadata,
        outcome: str,
        predicted: Any = None,
        actual: Any = None,
        abs_error: float | None = None,
    ) -> None:
        """Count one feedback item; a newly labelled one also updates the quality series.

        A regressor's label brings its ``abs_error``, which must square to a finite number:
        the feedback path refuses any other, and a counter once +Inf stays +Inf.
        """
        name, version = metadata.name, str(metadata.version)
        if outcome == "labelled" and not (
            abs_error is not None and math.isfinite(abs_error * abs_error)
        ):
            raise ValueError("a labelled regressor prediction needs a finite error")
        self.feedback.labels(name, version, outcome).inc()
        if outcome in ("correct", "incorrect"):
            self.confusion.labels(
                name,
                version,
                self.class_label(metadata, predicted),
                self.class_label(metadata, actual),
                _bool_label(outcome == "correct"),
            ).inc()
        elif outcome == "labelled" and abs_error is not None:
            self.absolute_error.labels(name, version).observe(abs_error)
            self.squared_error.labels(name, version).inc(abs_error * abs_error)


class ModelSeries:
    """The prediction-path series of one model version, as ready-made label children."""

    def __init__(self, metrics: Metrics, metadata: ModelMetadata) -> None:
        name, version = metadata.name, str(metadata.version)
        self.predictions = metrics.predictions.labels(name, version)
        self.inference_duration = metrics.inference_duration.labels(name, version)
        self.batch_rows = metrics.batch_rows.labels(name, version)
        self._classes: dict[Label, Counter] = {}
        self._other: Counter | None = None
        if metadata.task == "classification":
            self._classes = {
                c: metrics.predicted_classes.labels(name, version, metrics.class_label(metadata, c))
                for c in metadata.classes or ()
            }
            self._other = metrics.predicted_classes.labels(name, version, OTHER_CLASS)

    def observe_batch(self, rows: int, seconds: float) -> None:
        """One model call."""
        self.inference_duration.observe(seconds)
        self.batch_rows.observe(rows)

    def count_predictions(self, predicted: Sequence[Label]) -> None:
        """Rows acknowledged to a client, and their predicted classes."""
        self.predictions.inc(len(predicted))
        if self._other is None:
            return
        counts: dict[Label, int] = {}
        for label in predicted:
            counts[label] = counts.get(label, 0) + 1
        for label, count in counts.items():
            self._classes.get(label, self._other).inc(count)


def _bool_label(value: bool) -> str:
    return "true" if value else "false"


def _runtime_labels(model: LoadedModel) -> tuple[str, str]:
    return model.runtime, "none" if model.fallback is None else model.fallback.reason
