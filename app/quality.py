"""Live quality per version from the prediction log: champion vs challenger, no Prometheus.

Accuracy for classifiers, MAE and RMSE for regressors, over the predictions each version made
in a window (by their ``created_at``), from one aggregate query of the store. A version with
nothing labelled has null metrics, never NaN; a sum that is not finite gives null too, so the
JSON never carries a non-finite number. (Each regressor error is at most 1e100, see
app/feedback.py, so no realistic sum gets there.)
"""

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app.artifacts import ModelMetadata
from app.schemas import ModelReport, VersionQuality
from app.settings import Settings
from app.store import PredictionStore, VersionCounts

if TYPE_CHECKING:  # the CLI uses live_quality without the serving side (scikit-learn)
    from app.registry import ModelEntry

DEFAULT_WINDOW_SECONDS: float = Settings.model_fields["quality_window_seconds"].default
"""``STEWARD_QUALITY_WINDOW_SECONDS``' default: 7 days."""


def live_quality(
    store: PredictionStore,
    model: str,
    metadata: Mapping[int, ModelMetadata],
    window_seconds: float | None = DEFAULT_WINDOW_SECONDS,
    now: datetime | None = None,
) -> list[VersionQuality]:
    """Each version's quality over the ``window_seconds`` before ``now`` (the whole log when
    None), by version number: every version of ``metadata`` (at 0 when it predicted nothing in
    the window) and any other version the log holds (its task unknown: null metrics).

    Blocking (a store query): call it from a worker thread. StoreUnavailable if the store fails.
    """
    since = None
    if window_seconds is not None:
        since = (now or datetime.now(UTC)) - timedelta(seconds=window_seconds)
    counts = {c.version: c for c in store.version_counts(model, since)}
    return [
        _quality(counts.get(v) or VersionCounts(v, 0, 0, 0, 0.0, 0.0), metadata.get(v))
        for v in sorted(counts.keys() | metadata.keys())
    ]


def report(entry: "ModelEntry", store: PredictionStore, window_seconds: float) -> ModelReport:
    """GET /models/{model}: the entry's detail with the live quality of its versions.
    Blocking, as live_quality."""
    detail = entry.detail()
    quality = live_quality(
        store, entry.name, {m.version: m for m in detail.versions}, window_seconds
    )
    return ModelReport(**dict(detail), quality=quality, quality_window_seconds=window_seconds)


def _quality(counts: VersionCounts, metadata: ModelMetadata | None) -> VersionQuality:
    task = metadata.task if metadata else None
    labelled = counts.labelled
    accuracy = mae = rmse = None
    if labelled and task == "classification":
        accuracy = _finite(counts.correct / labelled)
    elif labelled and task == "regression":
        mae = _finite(counts.abs_error_sum / labelled)
        mean_square = _finite(counts.squared_error_sum / labelled)
        rmse = None if mean_square is None else _finite(math.sqrt(mean_square))
    return VersionQuality(
        version=counts.version,
        predictions=counts.predictions,
        labelled=labelled,
        accuracy=accuracy,
        mae=mae,
        rmse=rmse,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
