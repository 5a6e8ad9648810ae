"""The drift collectors, reached as ``metrics.drift``: app/drift_monitor.py publishes each
version's report through them, app/drift_window.py counts data-quality issues on their counters.

Feature labels stay bounded: a model with at most STEWARD_DRIFT_FEATURE_LABELS features has a
series per feature; a wider one exports the STEWARD_DRIFT_TOP_FEATURES features with the highest
PSI (the set changes as they do) and counts its data-quality issues under ``feature="_all"``.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge

from app.artifacts import ModelMetadata
from app.drift_report import STATUS_LEVEL, DriftReport
from app.drift_window import ISSUES, Increment, Issue
from app.multiprocess_metrics import remove_series

ALL_FEATURES = "_all"


class DriftMetrics:
    """The drift collectors and the series each version has published."""

    def __init__(self, registry: CollectorRegistry, feature_labels: int, top_features: int) -> None:
        self.feature_labels = feature_labels
        self.top_features = top_features
        self.psi = Gauge(
            "steward_feature_drift_psi",
            "Population Stability Index of a feature's served values (the drift window) against "
            "the version's training profile, by model, version and feature.",
            ["model", "version", "feature"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.ks = Gauge(
            "steward_feature_drift_ks",
            "Two-sample Kolmogorov-Smirnov statistic of a numeric feature's served values (the "
            "drift window) against the version's training sample.",
            ["model", "version", "feature"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.quality = Counter(
            "steward_data_quality",
            "Served values with a data-quality issue, by model, version, feature and issue: "
            + ", ".join(ISSUES)
            + ".",
            ["model", "version", "feature", "issue"],
            registry=registry,
        )
        self.status = Gauge(
            "steward_model_drift_status",
            "A version's input drift: -1 not judged (no reference, or too few rows), 0 ok, "
            "1 warn, 2 drift (its worst feature's PSI against the thresholds).",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.estimated_accuracy = Gauge(
            "steward_estimated_accuracy",
            "Accuracy a classifier expects of itself over the drift window: its mean top-class "
            "probability (confidence-based, before labels arrive).",
            ["model", "version"],
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.window_rows = Gauge(
            "steward_drift_window_rows",
            "Served rows in a version's drift window.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._published: dict[tuple[str, int], tuple[set[str], set[str]]] = {}

    def counters(self, metadata: ModelMetadata) -> list[dict[Issue, Increment]]:
        """Per feature of a version, its issue counters (made at 0)."""
        name, version = metadata.name, str(metadata.version)
        if len(metadata.features) > self.feature_labels:
            shared: dict[Issue, Increment] = {
                issue: self.quality.labels(name, version, ALL_FEATURES, issue) for issue in ISSUES
            }
            return [shared for _ in metadata.features]
        return [
            {issue: self.quality.labels(name, version, f.name, issue) for issue in ISSUES}
            for f in metadata.features
        ]

    def publish(self, report: DriftReport) -> None:
        """Set a version's gauges to ``report``; a feature no longer exported loses its series."""
        name, version = report.model, str(report.version)
        self.window_rows.labels(name, version).set(report.window_rows)
        self.status.labels(name, version).set(STATUS_LEVEL.get(report.status, -1))
        if report.estimated_accuracy is None:
            remove_series(self.estimated_accuracy, name, version)
        else:
            self.estimated_accuracy.labels(name, version).set(report.estimated_accuracy)
        judged = [f for f in report.features if f.psi is not None]
        if len(report.features) > self.feature_labels:
            judged = sorted(judged, key=lambda f: -(f.psi or 0.0))[: self.top_features]
        old_psi, old_ks = self._published.get((report.model, report.version), (set(), set()))
        psi, ks = set(), set()
        for feature in judged:
            self.psi.labels(name, version, feature.name).set(feature.psi or 0.0)
            psi.add(feature.name)
            if feature.ks is not None:
                self.ks.labels(name, version, feature.name).set(feature.ks)
                ks.add(feature.name)
        for gone in old_psi - psi:
            remove_series(self.psi, name, version, gone)
        for gone in old_ks - ks:
            remove_series(self.ks, name, version, gone)
        self._published[(report.model, report.version)] = (psi, ks)

    def forget(self, name: str, version: int) -> None:
        """A version left memory: its gauges go (its counters stay: rate() needs them)."""
        psi, ks = self._published.pop((name, version), (set(), set()))
        for feature in psi:
            remove_series(self.psi, name, str(version), feature)
        for feature in ks:
            remove_series(self.ks, name, str(version), feature)
        for gauge in (self.status, self.estimated_accuracy, self.window_rows):
            remove_series(gauge, name, str(version))
