"""The data a retraining learns from: versions trained through our own code, a real SQLite
store filled by the real app (POST /predict, then POST /feedback, a candidate shadowing
production) or, where prediction times must be controlled, by the store's own writes."""

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import (
    DIABETES_ROW,
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    NOW,
    churn_frame,
    predict,
    prediction_ids,
    stored_shadow_rows,
    wait_until,
    write_labelled,
)
from sklearn.linear_model import LinearRegression

from app import lifecycle
from app.aliases import ALIASES, set_alias
from app.artifacts import DataSource, read_metadata
from app.errors import LifecycleConflict, StoreUnavailable, TrainingDataRefused, UnknownModel
from app.main import create_app
from app.registration import register_estimator
from app.retraining_data import RetrainingSet, retraining_set
from app.services import Services
from app.settings import Settings
from app.store import SqlStore, open_store
from app.training import DEMOS, train_csv, train_demo
from app.training_data import demo_training_frame, rows_digest

DAY = 86400.0


def accounted(data: RetrainingSet) -> int:
    """Every labelled row read, by where it went."""
    return data.feedback_rows + data.held_out + data.duplicates + data.conflicts + data.unfit


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'data' / 'steward.db'}")
    yield opened
    opened.close()


# --- a demo version, its feedback logged by the real app, a candidate shadowing it ----------


CLASSES = ("setosa", "versicolor", "virginica")


def shifted(i: int) -> dict[str, float]:
    """Distinct iris rows, larger than any the demo was trained on."""
    return {
        "sepal_length_cm": 8.0 + i / 10,
        "sepal_width_cm": 4.5,
        "petal_length_cm": 7.0 + i / 10,
        "petal_width_cm": 2.6,
    }


def send(
    client: TestClient, model: str, row: dict[str, Any], truth: object, version: int | None = None
) -> None:
    """Predict one row (by production unless ``version``), wait for its shadow, label it
    (unless ``truth`` is None)."""
    pinned = "" if version is None else f"?version={version}"
    (prediction_id,) = prediction_ids(predict(client, f"{model}{pinned}", row))
    services: Services = client.app_state["services"]
    assert wait_until(lambda: services.predictor.shadows.pending_rows == 0, seconds=10)
    if truth is not None:
        answer = client.post(
            "/feedback", json={"prediction_id": prediction_id, "ground_truth": truth}
        )
        assert answer.status_code == 200, answer.text


@pytest.fixture
def served_iris(tmp_path: Path, models_dir: Path) -> Path:
    """iris: production v1 (demo), candidate v2 (demo) shadowing every request, and v3 trained
    from a CSV of two of its features (another schema) with integer classes; feedback on all
    three, logged by the real app. Returns the registry."""
    train_demo(models_dir)
    set_alias(models_dir, "iris", "candidate", 2)
    lifecycle.set_traffic(models_dir, "iris", "shadow")
    frame, labels = demo_training_frame(read_metadata(models_dir, "iris", 1), DEMOS)
    narrow_csv = tmp_path / "narrow.csv"
    narrow_frame = frame[["sepal_length_cm", "petal_length_cm"]]
    narrow_frame.assign(species=pd.factorize(labels)[0]).to_csv(narrow_csv, index=False)
    assert train_csv(models_dir, narrow_csv, "species", "iris").version == 3
    settings = Settings(
        models_dir=models_dir, data_dir=tmp_path / "data", reload_interval_seconds=0
    )
    with TestClient(create_app(settings)) as client:
        client.app_state["services"].watcher.scan()
        send(client, "iris", IRIS_SETOSA, "setosa")
        send(client, "iris", IRIS_VIRGINICA, "virginica")  # relabelled below: a conflict
        send(client, "iris", IRIS_SETOSA, "setosa")  # a duplicate
        for i in range(12):
            send(client, "iris", shifted(i), CLASSES[i % 3])
        send(client, "iris", IRIS_SETOSA, "setosa")  # the one kept of the three
        send(client, "iris", IRIS_VIRGINICA, "versicolor")  # the latest label wins
        send(client, "iris", shifted(99), None)  # never labelled: not feedback
        narrow = {"sepal_length_cm": 5.0, "petal_length_cm": 1.5}
        send(client, "iris", narrow, 0, version=3)  # another schema: unfit
        send(client, "iris", narrow | {"sepal_length_cm": 6.0}, 1, version=3)
        send(client, "diabetes", DIABETES_ROW, 150.0)  # another model
    return models_dir


def test_a_demo_version_retrains_on_its_rows_and_the_served_feedback_never_the_shadows(
    tmp_path: Path, served_iris: Path, store: SqlStore
) -> None:
    shadows = stored_shadow_rows(tmp_path / "data")
    # the candidate shadowed each production row, and each labelled one was labelled with it
    assert len(shadows) == 18
    assert sum(s["ground_truth"] is not None for s in shadows) == 17

    data = retraining_set(served_iris, store, "iris", holdout_seconds=0)
    production = read_metadata(served_iris, "iris", 1)
    assert data.production == production
    base, base_labels = demo_training_frame(production, DEMOS)
    expected = [*(shifted(i) for i in range(12)), IRIS_SETOSA, IRIS_VIRGINICA]
    expected_labels = [CLASSES[i % 3] for i in range(12)]
    expected_labels += ["setosa", "versicolor"]
    assert (data.labelled, data.duplicates, data.conflicts, data.unfit) == (19, 2, 1, 2)
    assert (data.feedback_rows, data.held_out) == (14, 0)
    assert accounted(data) == data.labelled
    assert list(data.frame.columns) == [f.name for f in production.features]
    assert len(data.frame) == len(data.labels) == 150 + 14
    pd.testing.assert_frame_equal(data.frame.iloc[:150], base)
    assert data.frame.iloc[150:].to_dict("records") == expected
    assert data.labels.tolist() == [*base_labels, *expected_labels]
    feedback = pd.DataFrame(expected), pd.Series(expected_labels, name="target")
    assert data.sources == [
        production.training_data.sources[0],  # type: ignore[union-attr]
        DataSource(kind="feedback", rows=14, sha256=rows_digest(*feedback)),
    ]
    assert data.sources[0].rows == 150
    assert data.recent_frame.empty
    assert data.recent_labels.empty

    # a day held out: this traffic is all recent, so none of it is trained on
    recent = retraining_set(served_iris, store, "iris", holdout_seconds=DAY)
    assert (recent.feedback_rows, recent.held_out, recent.duplicates, recent.conflicts) == (
        0, 14, 2, 1,
    )  # fmt: skip
    assert len(recent.frame) == 150
    assert recent.recent_frame.to_dict("records") == expected
    assert recent.recent_labels.tolist() == expected_labels
    assert recent.sources[1] == DataSource(kind="feedback", rows=0)


# --- a CSV version with its copy: the holdout window and `since`, by prediction time ---------


def churn_csv(path: Path, rows: int = 120) -> Path:
    churn_frame(rows).assign(note="kept out").to_csv(path, index=False)
    return path


def churn(plan: str, months: Any, spend: float | None) -> dict[str, Any]:
    return {"plan": plan, "months": months, "spend": spend}


def test_the_recent_window_is_held_out_and_since_bounds_the_feedback(
    tmp_path: Path, store: SqlStore
) -> None:
    models = tmp_path / "models"
    csv = churn_csv(tmp_path / "churn.csv")
    production = train_csv(models, csv, "churned", "churn", drop=["note"])
    hour = timedelta(hours=1)
    write_labelled(
        store,
        "churn",
        [
            (96 * hour, churn("basic", 1, 10.0), "yes"),  # before `since`: never read
            (72 * hour, churn("basic", 2, 10.0), "yes"),  # trained on: `since` is inclusive
            (48 * hour, churn("pro", 3, 30.0), "no"),  # relabelled in the window: a conflict
            (30 * hour, churn("gold", 4, 40.0), "no"),  # an unseen plan fits: it is learnt
            (25 * hour, churn("team", 5, 50.0), "no"),  # the window's start: trained on
            (24 * hour, churn("team", 6.5, 60.0), "no"),  # months 6.5: another schema, unfit
            (24 * hour, churn("team", 7, 70.0), 1),  # a label of another kind: unfit
            (20 * hour, churn("basic", 8, None), "yes"),  # held out; spend missing, nullable
            (3 * hour, churn("pro", 9, 90.0), None),  # unlabelled
            (1 * hour, churn("pro", 3, 30.0), "yes"),  # the newest: held out, label wins
        ],
    )
    data = retraining_set(models, store, "churn", since=NOW - 72 * hour, holdout_seconds=DAY)
    assert data.recent_after == NOW - 25 * hour
    assert data.since == NOW - 72 * hour
    assert (data.labelled, data.duplicates, data.conflicts, data.unfit) == (8, 0, 1, 2)
    assert (data.feedback_rows, data.held_out) == (3, 1 + 1)
    assert accounted(data) == data.labelled
    base = pd.read_csv(csv).drop(columns="note")
    base_labels = base.pop("churned")
    assert len(data.frame) == 120 + 3
    pd.testing.assert_frame_equal(data.frame.iloc[:120], base)
    assert data.frame.iloc[120:].to_dict("records") == [
        churn("basic", 2, 10.0), churn("gold", 4, 40.0), churn("team", 5, 50.0),
    ]  # fmt: skip
    assert data.labels.tolist() == [*base_labels, "yes", "no", "no"]
    recent = data.recent_frame.astype(object).where(data.recent_frame.notna(), None)
    assert recent.to_dict("records") == [churn("basic", 8, None), churn("pro", 3, 30.0)]
    assert data.recent_labels.tolist() == ["yes", "yes"]
    assert [s.kind for s in data.sources] == ["csv", "feedback"]
    assert data.sources[0] == production.training_data.sources[0]  # type: ignore[union-attr]

    everything = retraining_set(models, store, "churn", holdout_seconds=0)
    assert (everything.labelled, everything.feedback_rows, everything.held_out) == (9, 6, 0)
    assert everything.recent_after == NOW - hour


# --- versions that keep no data of their own ----------------------------------------------


def test_a_csv_version_without_its_copy_retrains_from_the_csv_given_again(
    tmp_path: Path, store: SqlStore
) -> None:
    models = tmp_path / "models"
    csv = churn_csv(tmp_path / "churn.csv")
    production = train_csv(models, csv, "churned", "churn", drop=["note"], copy_max_bytes=0)
    write_labelled(
        store, "churn", [(timedelta(hours=i), churn("pro", i, 5.0), "no") for i in range(3)]
    )
    with pytest.raises(TrainingDataRefused) as refused:
        retraining_set(models, store, "churn", holdout_seconds=0)
    assert str(refused.value) == (
        "churn v1: need at least 10 labelled rows, got 3 of feedback (copies are off "
        "(STEWARD_TRAINING_COPY_MAX_BYTES=0)): pass --csv with its data"
    )
    assert refused.value.status_code == 409

    data = retraining_set(models, store, "churn", csv=csv, holdout_seconds=0)
    # the same rows as trained on: the same digest as the version recorded
    assert data.sources == [
        production.training_data.sources[0],  # type: ignore[union-attr]
        DataSource(kind="feedback", rows=3, sha256=data.sources[1].sha256),
    ]
    assert (len(data.frame), data.feedback_rows) == (123, 3)
    assert list(data.frame.columns) == ["plan", "months", "spend"]

    lacking = tmp_path / "lacking.csv"
    pd.read_csv(csv).drop(columns=["months", "churned"]).to_csv(lacking, index=False)
    with pytest.raises(TrainingDataRefused, match=r"missing columns months, churned \(the "):
        retraining_set(models, store, "churn", csv=lacking, holdout_seconds=0)


def test_a_registered_version_retrains_from_feedback_alone_when_there_is_enough(
    tmp_path: Path, store: SqlStore
) -> None:
    x = np.arange(40, dtype=float).reshape(20, 2)
    artifact = tmp_path / "model.joblib"
    joblib.dump(LinearRegression().fit(x, x[:, 0] * 2), artifact)
    sample = tmp_path / "inputs.csv"
    pd.DataFrame(x, columns=["a", "b"]).to_csv(sample, index=False)
    models = tmp_path / "models"
    register_estimator(models, artifact, "doubler", sample)
    row = [(timedelta(minutes=i), {"a": float(i), "b": 1.0}, 2.0 * i) for i in range(9)]
    write_labelled(
        store, "doubler", [*row, (timedelta(0), {"a": 1.0, "b": 2.0}, "two")]
    )  # "two": unfit
    with pytest.raises(TrainingDataRefused) as refused:
        retraining_set(models, store, "doubler", holdout_seconds=0)
    assert str(refused.value) == (
        "doubler v1: need at least 10 labelled rows, got 9 of feedback (registered: trained "
        "elsewhere, Steward holds no training data): pass --csv with its data"
    )
    with pytest.raises(TrainingDataRefused, match=r"doubler v1 records no target column: name"):
        retraining_set(models, store, "doubler", csv=sample, holdout_seconds=0)

    write_labelled(store, "doubler", [(timedelta(hours=1), {"a": 100.0, "b": 0.0}, 200.0)])
    data = retraining_set(models, store, "doubler", holdout_seconds=0)
    assert (data.labelled, data.unfit, data.feedback_rows) == (11, 1, 10)
    assert data.sources == [DataSource(kind="feedback", rows=10, sha256=data.sources[0].sha256)]
    assert data.frame.iloc[0].to_dict() == {"a": 100.0, "b": 0.0}  # the oldest first
    assert data.labels.tolist() == [200.0, *(2.0 * i for i in reversed(range(9)))]

    labelled = tmp_path / "labelled.csv"
    pd.DataFrame(x, columns=["a", "b"]).assign(y=x[:, 0] * 2).to_csv(labelled, index=False)
    given = retraining_set(models, store, "doubler", csv=labelled, target="y", holdout_seconds=0)
    assert given.sources[0] == DataSource(
        kind="csv", name="labelled.csv", rows=20, sha256=given.sources[0].sha256
    )
    assert (len(given.frame), given.labels.iloc[:20].tolist()) == (30, (x[:, 0] * 2).tolist())


# --- what cannot be retrained ---------------------------------------------------------------


def test_a_model_that_is_unknown_or_has_no_production_version_is_refused(
    tmp_path: Path, models_dir: Path, store: SqlStore
) -> None:
    with pytest.raises(UnknownModel, match="no model 'nope'"):
        retraining_set(models_dir, store, "nope", holdout_seconds=0)
    for hostile in ("../iris", "iris\n", "<b>" * 30_000):  # never repeated
        with pytest.raises(UnknownModel) as unknown:
            retraining_set(models_dir, store, hostile, holdout_seconds=0)
        assert hostile not in str(unknown.value)
        assert "a model name is 1-64 of" in str(unknown.value)
    (models_dir / "iris" / ALIASES).write_text(json.dumps({"candidate": 1}))
    with pytest.raises(LifecycleConflict, match="iris has no production version to retrain"):
        retraining_set(models_dir, store, "iris", holdout_seconds=0)


def test_a_store_that_is_down_passes_through(
    tmp_path: Path, models_dir: Path, store: SqlStore
) -> None:
    with sqlite3.connect(tmp_path / "data" / "steward.db") as conn:
        conn.execute("DROP TABLE predictions")
    with pytest.raises(StoreUnavailable, match="failed to read labelled predictions"):
        retraining_set(models_dir, store, "iris", holdout_seconds=0)
