"""Live quality per version, from a real SQLite store and the demo models' real metadata."""

import math
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.artifacts import ModelMetadata, read_metadata
from app.quality import DEFAULT_WINDOW_SECONDS, live_quality, model_quality
from app.schemas import VersionQuality
from app.settings import Settings
from app.store import Label, PredictionRecord, SqlStore, open_store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def versions(demo_models: Path, model: str, *numbers: int) -> dict[int, ModelMetadata]:
    """The model's version 1 metadata, under each of ``numbers``: only its task matters here."""
    metadata = read_metadata(demo_models, model, 1)
    return {n: metadata.model_copy(update={"version": n}) for n in numbers}


def log(
    store: SqlStore,
    model: str,
    version: int,
    *truths: tuple[bool | None, float | None] | None,
    age: timedelta = timedelta(hours=1),
    now: datetime = NOW,
) -> None:
    """One prediction per item of ``truths``: None for unlabelled, else (correct, abs_error)."""
    rows = [
        PredictionRecord(uuid.uuid4().hex, model, version, now - age, ("x",), (1.0,), "p")
        for _ in truths
    ]
    store.write_predictions(rows)
    labels = [
        Label(row.id, "truth", truth[0], truth[1], NOW)
        for row, truth in zip(rows, truths, strict=True)
        if truth is not None
    ]
    assert store.label(labels) == {label.prediction_id for label in labels}


def test_champion_and_challenger_accuracy(store: SqlStore, demo_models: Path) -> None:
    right, wrong = (True, None), (False, None)
    log(store, "iris", 1, right, right, wrong, None)
    log(store, "iris", 2, right, wrong, wrong, wrong, right)
    log(store, "iris", 1, wrong, wrong, age=timedelta(days=8))  # outside the default window
    found = live_quality(store, "iris", versions(demo_models, "iris", 1, 2, 3), now=NOW)
    assert found == [
        VersionQuality(
            version=1, role="served", predictions=4, labelled=3, accuracy=2 / 3, mae=None, rmse=None
        ),
        VersionQuality(
            version=2, role="served", predictions=5, labelled=5, accuracy=0.4, mae=None, rmse=None
        ),
        VersionQuality(
            version=3, role="served", predictions=0, labelled=0, accuracy=None, mae=None, rmse=None
        ),
    ]
    (everything, *_) = live_quality(store, "iris", versions(demo_models, "iris", 1), None, NOW)
    assert (everything.predictions, everything.labelled, everything.accuracy) == (6, 5, 0.4)


def test_regressor_mae_and_rmse(store: SqlStore, demo_models: Path) -> None:
    log(store, "diabetes", 1, (None, 1.0), (None, 3.0), (None, 0.0), None)
    log(store, "diabetes", 2, None, None)
    (one, two) = live_quality(store, "diabetes", versions(demo_models, "diabetes", 1, 2), now=NOW)
    assert one == VersionQuality(
        version=1,
        role="served",
        predictions=4,
        labelled=3,
        accuracy=None,
        mae=4 / 3,
        rmse=math.sqrt(10 / 3),
    )
    assert two == VersionQuality(
        version=2, role="served", predictions=2, labelled=0, accuracy=None, mae=None, rmse=None
    )


def test_a_version_the_log_holds_without_metadata_shows_counts_only(
    store: SqlStore, demo_models: Path
) -> None:
    log(store, "iris", 7, (True, None), None)
    assert live_quality(store, "iris", versions(demo_models, "iris", 1), now=NOW) == [
        VersionQuality(
            version=1, role="served", predictions=0, labelled=0, accuracy=None, mae=None, rmse=None
        ),
        VersionQuality(
            version=7, role="served", predictions=2, labelled=1, accuracy=None, mae=None, rmse=None
        ),
    ]


def test_a_model_with_no_predictions(store: SqlStore) -> None:
    assert live_quality(store, "nope", {}) == []


def test_errors_whose_squares_overflow_give_null_not_infinity(
    store: SqlStore, demo_models: Path
) -> None:
    """Errors beyond what feedback accepts (1e100), as an older log might hold: each squares to
    infinity in SQLite; RMSE is null, MAE (finite) is kept."""
    log(store, "diabetes", 1, (None, 1e200), (None, 1e200))
    (found,) = live_quality(store, "diabetes", versions(demo_models, "diabetes", 1), now=NOW)
    assert (found.mae, found.rmse) == (1e200, None)


def test_the_default_window_is_the_settings_default() -> None:
    assert DEFAULT_WINDOW_SECONDS == Settings().quality_window_seconds == 7 * 86400


def test_model_quality_before_anything_served_is_none_and_creates_no_store(
    settings: Settings,
) -> None:
    assert model_quality(settings, "iris") is None
    assert not (settings.data_dir / "steward.db").exists()


def test_model_quality_scores_the_registry_versions_from_the_configured_store(
    settings: Settings,
) -> None:
    """Version 1 from the log over the settings' window (two hours here), version 2 with
    nothing served, version 3's unreadable metadata leaving its rows unscored."""
    settings = settings.model_copy(update={"quality_window_seconds": 7200.0})
    shutil.copytree(settings.models_dir / "iris" / "1", settings.models_dir / "iris" / "2")
    (settings.models_dir / "iris" / "3").mkdir()
    (settings.models_dir / "iris" / "3" / "metadata.json").write_text("{not json")
    settings.data_dir.mkdir()
    store = open_store(settings.store_url)
    try:
        now = datetime.now(UTC)
        log(store, "iris", 1, (True, None), (False, None), (True, None), None, now=now)
        log(store, "iris", 1, (False, None), age=timedelta(hours=3), now=now)  # outside
        log(store, "iris", 3, (True, None), now=now)
    finally:
        store.close()
    found = model_quality(settings, "iris")
    assert found is not None
    assert found.paired == []  # nothing predicted in shadow
    assert [(q.version, q.role, q.predictions, q.labelled, q.accuracy) for q in found.versions] == [
        (1, "served", 4, 3, 2 / 3),
        (2, "served", 0, 0, None),
        (3, "served", 1, 1, None),
    ]
