"""Input drift while serving: a window per loaded version (app/drift_window.py), scored against
its training profile (app/drift.py) in the background, published to the drift metrics
(app/drift_metrics.py) and to GET /models/{model}/drift.

Each version gets its own window when it loads (the registry's ``on_load``), so a swap starts
the new version from an empty window while the old one keeps its own until it is unloaded.
Every STEWARD_DRIFT_INTERVAL_SECONDS, the windows are copied on the event loop and scored in a
worker thread; the request path only appends.

A version saved before profiles had bins has its profile rebuilt once, in that worker thread,
from the rows it was trained on where they are stored (app/training_rows.py); otherwise it
reports ``no_reference`` and serves as ever.

Estimated accuracy (confidence-based performance estimation, as NannyML's CBPE): the mean of the
top-class probability over the window, which is the accuracy a calibrated classifier expects.
It needs no labels; it is as good as the model's calibration, and the gap between it and the
accuracy on feedback shows how well calibrated it is (docs/metrics.md).
"""

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np

from app.artifacts import FeatureProfile, ModelMetadata
from app.drift import (
    Scores,
    categorical_scores,
    numeric_scores,
    reference_profile,
    usable_profile,
)
from app.drift_metrics import DriftMetrics
from app.drift_report import (
    STATUS_LEVEL,
    DataQuality,
    DriftReport,
    FeatureDrift,
    FeatureStatus,
    ReferenceSource,
)
from app.drift_window import DriftWindow, Snapshot, capacity
from app.errors import ArtifactError, UnknownVersion
from app.features import FeatureSpec, Row, date_to_days
from app.loading import LoadedModel, RowOutput
from app.model_entry import ModelEntry
from app.periodic import Periodic
from app.registry import Registry
from app.settings import Settings
from app.training_rows import stored_training_matrix

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Watched:
    """One loaded version's window, reference and latest report."""

    metadata: ModelMetadata
    window: DriftWindow
    reference: dict[str, FeatureProfile] | None
    source: ReferenceSource | None
    reference_rows: int | None = None
    reason: str | None = None  # why there is no reference
    report: DriftReport | None = None
    rebuilt: bool = field(default=False)  # a rebuild from stored rows was tried


class DriftMonitor:
    """The drift windows of the loaded versions, and their latest reports."""

    def __init__(self, settings: Settings, metrics: DriftMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root: Path = settings.models_dir
        self._watched: dict[LoadedModel, _Watched] = {}
        self._lock = threading.Lock()  # publishing vs. a version leaving
        self._periodic = Periodic("drift scores", settings.drift_interval_seconds, self.refresh)

    def follow(self, registry: Registry) -> None:
        """Give each loaded version a window (nothing when STEWARD_DRIFT is false)."""
        if self.settings.drift:
            registry.on_load.append(self._loaded)
            registry.on_unload.append(self._unloaded)

    def start(self) -> None:
        if self.settings.drift:
            self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()

    def observe(
        self, model: LoadedModel, rows: Sequence[Row], outputs: Sequence[RowOutput]
    ) -> None:
        """Rows ``model`` answered a client for: into its window (on the event loop)."""
        watched = self._watched.get(model)
        if watched is not None:
            watched.window.append(rows, outputs, time.monotonic())

    async def refresh(self) -> None:
        """Score every window now (the periodic work; tests call it to skip the wait)."""
        since = time.monotonic() - self.settings.drift_window_seconds
        snapshots = [(w, w.window.snapshot(since)) for w in self._watched.values()]
        await anyio.to_thread.run_sync(self._score_all, snapshots)

    def report(self, entry: ModelEntry, version: str | None) -> DriftReport:
        """The latest report of the version ``version`` names (None: production), with the data
        quality counted up to now."""
        state = entry.state
        number = entry.number(version, state)
        refusal = state.refusals.get(number)
        if refusal is not None:
            raise refusal.unavailable()
        if number not in state.versions:
            raise UnknownVersion(
                f"model {entry.name!r} has no such version or alias",
                [{"field": "version", "message": "a version number or an alias of the model"}],
                model=entry.name,
            )
        watched = next(
            (w for m, w in self._watched.items() if m.name == entry.name and m.version == number),
            None,
        )
        if watched is None:
            return self._idle(entry, number)
        report = watched.report
        if report is None:  # loaded since the last round: nothing scored yet
            report = self._report(watched, Snapshot([], [])).model_copy(
                update={
                    "status": "collecting",
                    "reason": "not scored yet: scores are computed every "
                    f"{self.settings.drift_interval_seconds:g} s (STEWARD_DRIFT_INTERVAL_SECONDS)",
                    "computed_at": None,
                }
            )
        counts = watched.window.counts
        features = [
            f.model_copy(update={"quality": DataQuality.of(counts[i])})
            for i, f in enumerate(report.features)
        ]
        return report.model_copy(update={"features": features})

    # --- registry hooks (any thread, under the registry's lock: short) ---------------------

    def _loaded(self, entry: ModelEntry, model: LoadedModel) -> None:
        metadata = model.metadata
        size = capacity(self.settings.drift_window_rows, len(metadata.features))
        window = DriftWindow(metadata.features, size, self.metrics.counters(metadata))
        reference = usable_profile(metadata)
        watched = _Watched(
            metadata,
            window,
            reference,
            "metadata" if reference else None,
            metadata.training_rows or metadata.sample_rows or None,
        )
        self._watched = {**self._watched, model: watched}  # replaced: readers take it whole

    def _unloaded(self, entry: ModelEntry, model: LoadedModel) -> None:
        with self._lock:
            self._watched = {m: w for m, w in self._watched.items() if m is not model}
            self.metrics.forget(model.name, model.version)

    # --- scoring (a worker thread) ---------------------------------------------------------

    def _score_all(self, snapshots: list[tuple[_Watched, Snapshot]]) -> None:
        for watched, snapshot in snapshots:
            try:
                if watched.reference is None and not watched.rebuilt:
                    self._rebuild(watched)
                report = self._report(watched, snapshot)
            except Exception:  # one version's failure must not stop the others' scores
                logger.exception(
                    "drift scores of %s v%d failed", watched.metadata.name, watched.metadata.version
                )
                continue
            with self._lock:
                if watched not in self._watched.values():  # unloaded meanwhile
                    continue
                watched.report = report
                self.metrics.publish(report)

    def _rebuild(self, watched: _Watched) -> None:
        """A profile from the rows the version was trained on, where they are stored (once:
        a version's folder never changes)."""
        watched.rebuilt = True
        metadata = watched.metadata
        problem = "its metadata has no usable reference profile"
        if metadata.reference_profile:
            problem = "its reference profile predates drift scores"
        try:
            matrix, source = stored_training_matrix(self.root, metadata)
        except ArtifactError as exc:
            watched.reason = f"{problem}, and it cannot be rebuilt: {exc}"
            return
        watched.reference = reference_profile(matrix, metadata.features)
        watched.source = source
        watched.reference_rows = len(matrix)
        logger.info(
            "%s v%d: reference profile rebuilt from its %s (%s)",
            metadata.name,
            metadata.version,
            source.replace("_", " "),
            problem,
        )

    def _report(self, watched: _Watched, snapshot: Snapshot) -> DriftReport:
        settings, metadata = self.settings, watched.metadata
        rows, min_rows = len(snapshot.rows), settings.drift_min_rows
        columns: list[Sequence[Any]] = (
            list(zip(*snapshot.rows, strict=True)) if rows else [() for _ in metadata.features]
        )
        counts = watched.window.counts
        features = []
        for index, feature in enumerate(metadata.features):
            profile = watched.reference.get(feature.name) if watched.reference else None
            if profile is not None and not profile.rows:  # no training value to compare with
                profile = None
            scores = _scores(feature, columns[index], profile, min_rows)
            features.append(
                FeatureDrift(
                    name=feature.name,
                    kind="numeric" if feature.numeric else "categorical",
                    status=self._feature_status(scores, profile is not None),
                    psi=scores.psi,
                    ks=scores.ks,
                    ks_pvalue=scores.ks_pvalue,
                    window_values=scores.values,
                    quality=DataQuality.of(counts[index]),
                )
            )
        status, reason = self._status(watched, rows, features)
        return DriftReport(
            model=metadata.name,
            version=metadata.version,
            status=status,
            reason=reason,
            computed_at=datetime.now(UTC),
            window_rows=rows,
            window_max_rows=watched.window.size,
            window_seconds=settings.drift_window_seconds,
            min_rows=min_rows,
            reference_rows=watched.reference_rows if watched.reference else None,
            reference_source=watched.source,
            psi_warn=settings.drift_psi_warn,
            psi_drift=settings.drift_psi_drift,
            estimated_accuracy=_estimated_accuracy(metadata, snapshot, min_rows),
            features=features,
        )

    def _feature_status(self, scores: Scores, referenced: bool) -> FeatureStatus:
        if not referenced:
            return "no_reference"
        if scores.psi is None:
            return "collecting"
        if scores.psi >= self.settings.drift_psi_drift:
            return "drift"
        return "warn" if scores.psi >= self.settings.drift_psi_warn else "ok"

    def _status(
        self, watched: _Watched, rows: int, features: list[FeatureDrift]
    ) -> tuple[Any, str | None]:
        if watched.reference is None:
            return "no_reference", watched.reason or "no reference profile yet"
        if rows < self.settings.drift_min_rows:
            return "collecting", (
                f"{rows} of the {self.settings.drift_min_rows} rows needed "
                "(STEWARD_DRIFT_MIN_ROWS) in the window"
            )
        judged = [f.status for f in features if f.status in STATUS_LEVEL]
        if not judged:
            return "collecting", "no feature has enough values present in the window"
        return max(judged, key=STATUS_LEVEL.__getitem__), None

    def _idle(self, entry: ModelEntry, number: int) -> DriftReport:
        """A version with no window here: drift is off, or it is not loaded (it has served
        nothing to score)."""
        settings = self.settings
        status = "off" if not settings.drift else "collecting"
        reason = (
            "STEWARD_DRIFT is false: served inputs are not watched"
            if not settings.drift
            else f"v{number} is not loaded in this server: it has served nothing here"
        )
        try:
            features = len(entry.metadata(number).features)
        except ArtifactError:  # loading it would refuse it: say so when it is asked to serve
            features = 1
        return DriftReport(
            model=entry.name,
            version=number,
            status=status,
            reason=reason,
            window_rows=0,
            window_max_rows=capacity(settings.drift_window_rows, features),
            window_seconds=settings.drift_window_seconds,
            min_rows=settings.drift_min_rows,
            psi_warn=settings.drift_psi_warn,
            psi_drift=settings.drift_psi_drift,
            features=[],
        )


def _scores(
    feature: FeatureSpec, values: Sequence[Any], profile: FeatureProfile | None, min_rows: int
) -> Scores:
    present = sum(v is not None for v in values)
    if profile is None:
        return Scores(present)
    if not feature.numeric:
        return categorical_scores(values, profile, min_rows)
    if feature.dtype == "date":
        values = [date_to_days(v) for v in values]
    numbers = np.array(values, dtype=np.float64)  # None -> NaN; booleans -> 0.0 / 1.0
    return numeric_scores(numbers, profile, min_rows)


def _estimated_accuracy(metadata: ModelMetadata, snapshot: Snapshot, min_rows: int) -> float | None:
    if metadata.task != "classification" or not metadata.has_proba:
        return None
    confidences = [max(p.values()) for p in snapshot.probabilities if p]
    if len(confidences) < min_rows:
        return None
    mean = math.fsum(confidences) / len(confidences)
    return mean if math.isfinite(mean) else None
