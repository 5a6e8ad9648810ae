"""GET /models/{model}/drift: what app/drift_monitor.py last computed for one version, the
same figures the drift metrics carry (app/drift_metrics.py)."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.drift_window import Issue

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
