"""Live quality per version from the prediction log: champion vs challenger, no Prometheus.

Accuracy for classifiers, MAE and RMSE for regressors, over the predictions each version made
in a window (by their ``created_at``), from aggregate queries of the store: the rows each
version served, apart from those it predicted in shadow, and each (champion, challenger) pair
side by side on the rows labelled for both (the same labels). A version with
nothing labelled has null metrics, never NaN; a sum that is not finite gives null too, so the
JSON never carries a non-finite number. (Each regressor error is at most 1e100, see
app/ground_truth.py, so no realistic sum gets there.)
"""

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app.artifacts import ModelMetadata, list_versions, read_metadata
from app.errors import ArtifactError
from app.schemas import AutoRollbackStatus, ModelReport, PairedQuality, VersionQuality
from app.settings import Settings
from app.store import PairedCounts, PredictionStore, VersionCounts, open_configured_store

if TYPE_CHECKING:  # the CLI uses live_quality without the serving side (scikit-learn)
    from app.model_entry import ModelEntry

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
    None), by version number, its served rows before its shadow rows: every version of
    ``metadata`` as served (at 0 when it served nothing in the window), each version that
    predicted in shadow in the window as shadow, and any other version the log holds (its task
    unknown: null metrics).

    Blocking (a store query): call it from a worker thread. StoreUnavailable if the store fails.
    """
    since = _since(window_seconds, now)
    counts = {(c.version, c.shadow): c for c in store.version_counts(model, since)}
    keys = counts.keys() | {(v, False) for v in metadata}
    return [
        _quality(counts.get(key) or VersionCounts(key[0], 0, 0, 0, 0.0, 0.0), metadata.get(key[0]))
        for key in sorted(keys)
    ]


def paired_quality(
    store: PredictionStore,
    model: str,
    metadata: Mapping[int, ModelMetadata],
    window_seconds: float | None = DEFAULT_WINDOW_SECONDS,
    now: datetime | None = None,
) -> list[PairedQuality]:
    """Champion (served) vs challenger (shadow) on the same labels, per pair of versions whose
    rows of the window are labelled for both; each side's metrics by its own version's task.
    Blocking, as live_quality."""
    since = _since(window_seconds, now)
    return [_paired(c, metadata) for c in store.paired_counts(model, since)]


def report(
    entry: "ModelEntry",
    store: PredictionStore,
    window_seconds: float,
    auto_rollback: AutoRollbackStatus,
) -> ModelReport:
    """GET /models/{model}: the entry's detail with the live quality of its versions, and the
    automatic rollback's status (app/auto_rollback.py). Blocking, as live_quality."""
    detail = entry.detail()
    metadata = {m.version: m for m in detail.versions}
    now = datetime.now(UTC)
    return ModelReport(
        **dict(detail),
        quality=live_quality(store, entry.name, metadata, window_seconds, now),
        paired=paired_quality(store, entry.name, metadata, window_seconds, now),
        quality_window_seconds=window_seconds,
        auto_rollback=auto_rollback,
    )


@dataclass(frozen=True)
class ModelQuality:
    """A model's live quality as the prediction store holds it (``steward versions``)."""

    versions: list[VersionQuality]
    """Each version's, served and in shadow, as live_quality."""
    paired: list[PairedQuality]
    """Each champion/challenger pair's on the same labels, as paired_quality."""


def model_quality(settings: Settings, name: str) -> ModelQuality | None:
    """The live quality of model ``name``'s versions in the registry, over
    STEWARD_QUALITY_WINDOW_SECONDS, from the prediction store; None when the embedded SQLite
    store was never created (nothing to read, and a read command does not create one).

    A version whose metadata is unreadable scores as task unknown (null metrics):
    lifecycle.describe says why it is unreadable. StoreUnavailable if the store fails.
    """
    if settings.database_url is None and not (settings.data_dir / "steward.db").exists():
        return None
    metadata = {}
    for number in list_versions(settings.models_dir, name):
        with contextlib.suppress(ArtifactError):
            metadata[number] = read_metadata(settings.models_dir, name, number)
    store = open_configured_store(settings)
    window = settings.quality_window_seconds
    try:
        return ModelQuality(
            live_quality(store, name, metadata, window),
            paired_quality(store, name, metadata, window),
        )
    finally:
        store.close()


def _since(window_seconds: float | None, now: datetime | None) -> datetime | None:
    if window_seconds is None:
        return None
    return (now or datetime.now(UTC)) - timedelta(seconds=window_seconds)


def _quality(counts: VersionCounts, metadata: ModelMetadata | None) -> VersionQuality:
    accuracy, mae, rmse = _scores(
        metadata, counts.labelled, counts.correct, counts.abs_error_sum, counts.squared_error_sum
    )
    return VersionQuality(
        version=counts.version,
        role="shadow" if counts.shadow else "served",
        predictions=counts.predictions,
        labelled=counts.labelled,
        accuracy=accuracy,
        mae=mae,
        rmse=rmse,
    )


def _paired(counts: PairedCounts, metadata: Mapping[int, ModelMetadata]) -> PairedQuality:
    labelled = counts.labelled
    champion = _scores(
        metadata.get(counts.champion),
        labelled,
        counts.champion_correct,
        counts.champion_abs_error_sum,
        counts.champion_squared_error_sum,
    )
    challenger = _scores(
        metadata.get(counts.challenger),
        labelled,
        counts.challenger_correct,
        counts.challenger_abs_error_sum,
        counts.challenger_squared_error_sum,
    )
    return PairedQuality(
        champion=counts.champion,
        challenger=counts.challenger,
        labelled=labelled,
        champion_accuracy=champion[0],
        challenger_accuracy=challenger[0],
        champion_mae=champion[1],
        challenger_mae=challenger[1],
        champion_rmse=champion[2],
        challenger_rmse=challenger[2],
    )


def _scores(
    metadata: ModelMetadata | None,
    labelled: int,
    correct: int,
    abs_error_sum: float,
    squared_error_sum: float,
) -> tuple[float | None, float | None, float | None]:
    """(accuracy, MAE, RMSE) of ``labelled`` rows by the version's task; null where they do
    not apply, nothing is labelled, or the value is not finite."""
    task = metadata.task if metadata else None
    if labelled and task == "classification":
        return _finite(correct / labelled), None, None
    if labelled and task == "regression":
        mean_square = _finite(squared_error_sum / labelled)
        rmse = None if mean_square is None else _finite(math.sqrt(mean_square))
        return None, _finite(abs_error_sum / labelled), rmse
    return None, None, None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
