"""`steward retrain --csv --target`: a label column the production version's recipe cannot
learn is refused in one line with the count, never its values, and nothing is written."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import assert_one_line_error, empty_store, predict, prediction_ids, run_cli
from sklearn.datasets import load_diabetes

from app.artifacts import read_metadata
from app.main import create_app
from app.settings import Settings
from app.training import DEMOS, train_csv
from app.training_data import demo_training_frame


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store a server made (empty), where `steward retrain` looks for it."""
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "data"))
    empty_store(tmp_path / "data")


def versions(models_dir: Path, name: str) -> list[str]:
    return sorted(p.name for p in (models_dir / name).iterdir() if p.is_dir())


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("numbers", "column 'numbers': 150 of 150 labels are not text like iris v1's classes"),
        ("other", "column 'other': no label is one of iris v1's 3 classes: is it the label"),
        ("single", "iris v1: a classifier learns from at least 2 classes, the 150 labelled rows"),
    ],
)  # fmt: skip
def test_a_classifier_refuses_labels_it_cannot_learn(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, message: str
) -> None:
    frame, species = demo_training_frame(read_metadata(models_dir, "iris", 1), DEMOS)
    codes = {"setosa": 0, "versicolor": 1, "virginica": 2}
    frame = frame.assign(
        numbers=species.map(codes), other=species.map(lambda s: f"secret-{s}"), single="setosa"
    )
    frame.to_csv(tmp_path / "iris.csv", index=False)
    argv = ("--models-dir", str(models_dir), "retrain", "iris", "--csv", str(tmp_path / "iris.csv"))
    code, out, err = run_cli(capsys, *argv, "--target", column)
    assert code == 1
    assert_one_line_error(err, message)
    assert "secret" not in err + out
    assert "version 2" not in out  # progress lines only, no report
    assert versions(models_dir, "iris") == ["1"]


def test_a_regressor_refuses_labels_that_are_not_finite_numbers(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_diabetes(as_frame=True).frame
    data = data.assign(text="secret", infinite=np.where(np.arange(len(data)) < 2, np.inf, 1.0))
    data.to_csv(tmp_path / "diabetes.csv", index=False)
    csv = str(tmp_path / "diabetes.csv")
    argv = ("--models-dir", str(models_dir), "retrain", "diabetes", "--csv", csv, "--target")
    for column, count in (("text", 442), ("infinite", 2)):
        code, _, err = run_cli(capsys, *argv, column)
        assert code == 1
        assert_one_line_error(
            err,
            f"column '{column}': {count} of 442 labels are not finite numbers, and diabetes v1 "
            "is a regressor",
        )
        assert "secret" not in err
    assert versions(models_dir, "diabetes") == ["1"]

    # the same file's true target retrains: the check refuses only what cannot be learnt
    code, _, err = run_cli(capsys, *argv, "target")
    assert (code, err) == (0, "")
    assert versions(models_dir, "diabetes") == ["1", "2"]


def test_a_csv_version_with_a_true_false_target_retrains_on_its_copy_and_on_the_same_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`steward train` learns true/false as the classes "False"/"True"; its kept copy and the
    same CSV given again read back as those, not as booleans."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    csv = tmp_path / "churn.csv"
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "churned": x[:, 0] > 0}).to_csv(csv, index=False)
    models = tmp_path / "models"
    v1 = train_csv(models, csv, "churned", "churn")
    assert v1.classes == ["False", "True"]
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "data"))
    empty_store(tmp_path / "data")
    where = ("--models-dir", str(models), "retrain", "churn")
    for argv in ((), ("--csv", str(csv))):
        code, out, err = run_cli(capsys, *where, *argv)
        assert (code, err) == (0, ""), err
        assert "churn: version" in out
    assert versions(models, "churn") == ["1", "2", "3"]
    for version in (2, 3):
        assert read_metadata(models, "churn", version).classes == ["False", "True"]


def test_feedback_labels_equal_to_integer_classes_keep_them_integers_and_count_as_equal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the real app, clients label an integer-class model's predictions 1.0 and 2.0
    (accepted: equal to the classes 1 and 2). The retrained version's classes are still the
    integers, so served predictions keep their type, and 2 and 2.0 on the same inputs are
    duplicates, not conflicts."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    csv = tmp_path / "cls.csv"
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": y}).to_csv(csv, index=False)
    models = tmp_path / "models"
    assert train_csv(models, csv, "y", "cls", promote=True).classes == [0, 1, 2]
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STEWARD_RETRAIN_HOLDOUT_SECONDS", "0")
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", retrain_holdout_seconds=0)
    distinct = [{"a": float(i) / 4, "b": 1.0} for i in range(6)]
    repeated = [{"a": 0.3, "b": 1.5}] * 3
    with TestClient(create_app(settings)) as client:
        ids = prediction_ids(predict(client, "cls", *distinct, *repeated))
        truth = [1.0] * 6 + [2, 2.0, 2]
        items = [{"prediction_id": i, "ground_truth": y} for i, y in zip(ids, truth, strict=True)]
        assert client.post("/feedback", json={"items": items}).status_code == 200

    code, out, err = run_cli(capsys, "--models-dir", str(models), "retrain", "cls", "--promote")
    assert (code, err) == (0, ""), err
    counts = (
        "9 labelled, 7 trained on, 0 held out (recent), 0 same as a held-out row, 2 duplicates, "
        "0 conflicts, 0 unfit"
    )
    assert f"feedback: {counts}" in out
    v2 = read_metadata(models, "cls", 2)
    assert v2.classes == [0, 1, 2]
    assert [type(c) for c in v2.classes] == [int, int, int]
    with TestClient(create_app(settings)) as client:
        served = predict(client, "cls", *distinct).json()
    assert served["version"] == 2
    assert all(type(p["prediction"]) is int for p in served["predictions"])


def test_a_csv_without_the_recorded_target_asks_for_target(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame, species = demo_training_frame(read_metadata(models_dir, "iris", 1), DEMOS)
    frame.assign(species=species).to_csv(tmp_path / "iris.csv", index=False)
    argv = ("--models-dir", str(models_dir), "retrain", "iris", "--csv", str(tmp_path / "iris.csv"))
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    assert_one_line_error(
        err,
        "iris.csv: missing columns target (the features and target 'target' of iris v1; its "
        "label column under another name: --target COLUMN)",
    )
    assert versions(models_dir, "iris") == ["1"]
