"""GET /models/{model}/drift: one version's window judged against its reference (``judge``),
the figures the drift metrics carry too (app/drift_metrics.py). app/drift_monitor.py keeps the
windows and calls ``judge`` every round, in a worker thread.

Estimated accuracy (confidence-based performance estimation, as NannyML's CBPE): the mean
top-class probability over the window. Steward predicts the top class (app/prediction.py), so
this is the accuracy a calibrated classifier expects of itself, with no label; it is only as
good as the model's calibration, and the gap to the accuracy on feedback shows how good that is
(docs/metrics.md).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from app.artifacts import FeatureProfile, ModelMetadata
from app.drift import Scores, categorical_scores, numeric_scores
from app.drift_window import Column, Issue, Snapshot
from app.features import FeatureSpec, date_to_days
from app.settings import Settings

DriftStatus = Literal["ok", "warn", "drift", "collecting", "no_reference", "off"]
"""A version's: its worst feature's status once judged; ``collecting`` while the window has
fewer than STEWARD_DRIFT_MIN_ROWS rows, ``no_reference`` without a usable training profile,
``off`` when STEWARD_DRIFT is false."""
FeatureStatus = Literal["ok", "warn", "drift", "collecting", "no_reference"]
ReferenceSource = Literal["metadata", "demo", "training_copy"]
"""Where a version's reference profile came from: its metadata, or, for a version saved
before profiles had bins, rebuilt from its demo dataset or its kept training rows."""

STATUS_LEVEL: dict[str, int] = {"ok": 0, "warn": 1, "drift": 2}
"""``steward_model_drift_status``' value of a judged status; any other is -1."""


class DataQuality(BaseModel):
    """Issues of one feature's served values since the version loaded in this process."""

    missing: int = 0
    out_of_range: int = 0
    unseen_category: int = 0

    @classmethod
    def of(cls, counts: dict[Issue, int]) -> "DataQuality":
        return cls(**counts)


class FeatureDrift(BaseModel):
    """One feature's window against its training reference."""

    name: str
    kind: Literal["numeric", "categorical"]
    status: FeatureStatus
    psi: float | None = Field(None, description="Population Stability Index; null: not judged.")
    ks: float | None = Field(
        None, description="Two-sample Kolmogorov-Smirnov statistic (numeric features)."
    )
    ks_pvalue: float | None = Field(None, description="Its p-value.")
    window_values: int = Field(description="Values present (not missing) in the window.")
    quality: DataQuality


class DriftReport(BaseModel):
    """A version's input drift, data quality and estimated accuracy, as this process sees
    what it served (several replicas: each its own; docs/metrics.md says how to combine)."""

    model: str
    version: int
    status: DriftStatus
    reason: str | None = Field(None, description="Why not judged, when it is not.")
    computed_at: datetime | None = Field(
        None, description="When the scores were computed (every STEWARD_DRIFT_INTERVAL_SECONDS)."
    )
    window_rows: int = Field(description="Served rows the scores cover.")
    window_max_rows: int = Field(description="Most rows the window keeps.")
    window_seconds: float = Field(description="Oldest age of a row in the window.")
    min_rows: int = Field(description="Rows (and values per feature) needed to judge.")
    reference_rows: int | None = Field(None, description="Training rows profiled.")
    reference_source: ReferenceSource | None = None
    psi_warn: float
    psi_drift: float
    estimated_accuracy: float | None = Field(
        None,
        description="Mean top-class probability over the window: the accuracy the model "
        "expects of itself (right only as far as it is calibrated). Classifiers with "
        "probabilities.",
    )
    realised_accuracy: float | None = Field(
        None, description="Accuracy on feedback over the quality window (null: none labelled)."
    )
    labelled: int = Field(0, description="Labelled predictions behind realised_accuracy.")
    features: list[FeatureDrift]


@dataclass(frozen=True, slots=True)
class Reference:
    """What a version's window is judged against: its training profile, where that came from
    and how many rows it covers; or, with no profile, why not."""

    profile: dict[str, FeatureProfile] | None
    source: ReferenceSource | None = None
    rows: int | None = None
    reason: str | None = None


def judge(
    metadata: ModelMetadata,
    reference: Reference,
    snapshot: Snapshot,
    counts: Sequence[dict[Issue, int]],
    window_max_rows: int,
    settings: Settings,
) -> DriftReport:
    """The report of a window ``snapshot`` of a version, with its data-quality ``counts``."""
    rows = len(snapshot)
    min_rows = min(settings.drift_min_rows, window_max_rows)  # a wide model's window is short
    columns = snapshot.columns(len(metadata.features))
    features = []
    for index, feature in enumerate(metadata.features):
        profile = reference.profile.get(feature.name) if reference.profile else None
        if profile is not None and not profile.rows:  # no training value to compare with
            profile = None
        scores = _scores(feature, columns[index], profile, min_rows)
        features.append(
            FeatureDrift(
                name=feature.name,
                kind="numeric" if feature.numeric else "categorical",
                status=_feature_status(scores, profile is not None, settings),
                psi=scores.psi,
                ks=scores.ks,
                ks_pvalue=scores.ks_pvalue,
                window_values=scores.values,
                quality=DataQuality.of(counts[index]),
            )
        )
    status, reason = _status(reference, rows, min_rows, features)
    return DriftReport(
        model=metadata.name,
        version=metadata.version,
        status=status,
        reason=reason,
        computed_at=datetime.now(UTC),
        window_rows=rows,
        window_max_rows=window_max_rows,
        window_seconds=settings.drift_window_seconds,
        min_rows=min_rows,
        reference_rows=reference.rows if reference.profile else None,
        reference_source=reference.source,
        psi_warn=settings.drift_psi_warn,
        psi_drift=settings.drift_psi_drift,
        estimated_accuracy=_estimated_accuracy(metadata, snapshot, min_rows),
        features=features,
    )


def idle(
    model: str,
    version: int,
    status: DriftStatus,
    reason: str,
    window_max_rows: int,
    settings: Settings,
) -> DriftReport:
    """The report of a version with no window scored: nothing served or nothing watched."""
    return DriftReport(
        model=model,
        version=version,
        status=status,
        reason=reason,
        window_rows=0,
        window_max_rows=window_max_rows,
        window_seconds=settings.drift_window_seconds,
        min_rows=min(settings.drift_min_rows, window_max_rows),
        psi_warn=settings.drift_psi_warn,
        psi_drift=settings.drift_psi_drift,
        features=[],
    )


def _scores(
    feature: FeatureSpec, values: Column, profile: FeatureProfile | None, min_rows: int
) -> Scores:
    if isinstance(values, np.ndarray):  # a window of numbers keeps floats, NaN for missing
        numbers = values
    elif feature.numeric:
        if feature.dtype == "date":
            values = [date_to_days(v) for v in values]
        numbers = np.array(values, dtype=np.float64)  # None -> NaN; booleans -> 0.0 / 1.0
    elif profile is None:
        return Scores(sum(v is not None for v in values))
    else:
        return categorical_scores(values, profile, min_rows)
    if profile is None:
        return Scores(int(np.count_nonzero(np.isfinite(numbers))))
    return numeric_scores(numbers, profile, min_rows)


def _feature_status(scores: Scores, referenced: bool, settings: Settings) -> FeatureStatus:
    if not referenced:
        return "no_reference"
    if scores.psi is None:
        return "collecting"
    if scores.psi >= settings.drift_psi_drift:
        return "drift"
    return "warn" if scores.psi >= settings.drift_psi_warn else "ok"


def _status(
    reference: Reference, rows: int, min_rows: int, features: list[FeatureDrift]
) -> tuple[DriftStatus, str | None]:
    if reference.profile is None:
        return "no_reference", reference.reason or "no reference profile yet"
    if rows < min_rows:
        return "collecting", (
            f"{rows} of the {min_rows} rows needed (STEWARD_DRIFT_MIN_ROWS) in the window"
        )
    judged = [f.status for f in features if f.status in STATUS_LEVEL]
    if not judged:
        return "collecting", "no feature has enough values present in the window"
    return max(judged, key=STATUS_LEVEL.__getitem__), None


def _estimated_accuracy(metadata: ModelMetadata, snapshot: Snapshot, min_rows: int) -> float | None:
    if metadata.task != "classification" or not metadata.has_proba:
        return None
    confidences = snapshot.confidences[np.isfinite(snapshot.confidences)]
    if len(confidences) < min_rows:
        return None
    mean = math.fsum(confidences.tolist()) / len(confidences)
    return mean if math.isfinite(mean) else None
