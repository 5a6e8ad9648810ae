"""A version's training rows rebuilt from what is stored: real versions trained and registered
through our own code, their rebuilt matrix profiled again against the profile saved at training."""

import gzip
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from helpers import METADATA_BEFORE_TRAINING_DATA, churn_frame
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from app.artifacts import (
    TRAINING_COPY,
    ChecksumMismatch,
    DataSource,
    DataSplit,
    ModelMetadata,
    Task,
    read_metadata,
)
from app.drift import reference_profile
from app.errors import ArtifactError
from app.registration import register_estimator
from app.training import DEMOS, train_csv
from app.training_rows import split_positions, split_rows, stored_training_matrix


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _assert_rebuilt_as_profiled(root: Path, metadata: ModelMetadata, source: str) -> np.ndarray:
    """The rebuilt matrix has a row per training row, a column per feature, and profiles to
    exactly the profile saved when the version was fitted; reading it changes no file."""
    folder = root / metadata.name / str(metadata.version)
    before = _folder_bytes(folder)
    matrix, found = stored_training_matrix(root, metadata)
    assert found == source
    assert matrix.shape == (metadata.training_rows, len(metadata.features))
    assert reference_profile(matrix, metadata.features) == metadata.reference_profile
    assert _folder_bytes(folder) == before
    return matrix


@pytest.mark.parametrize("demo", [d.name for d in DEMOS])
def test_a_demo_versions_training_matrix_is_rebuilt(demo_models: Path, demo: str) -> None:
    metadata = read_metadata(demo_models, demo, 1)
    _assert_rebuilt_as_profiled(demo_models, metadata, "demo")


def test_the_rebuilt_iris_rows_are_the_training_part_of_scikit_learns(demo_models: Path) -> None:
    """Independently: scikit-learn's iris, split as Steward records it (a quarter held out,
    seed 0, stratified by species), gives the very rows rebuilt, in the same order."""
    matrix, _ = stored_training_matrix(demo_models, read_metadata(demo_models, "iris", 1))
    iris = datasets.load_iris()
    train, held_out = train_test_split(
        iris.data, test_size=0.25, random_state=0, stratify=iris.target
    )
    assert matrix.dtype == np.float64
    assert np.array_equal(matrix, train)
    assert not {tuple(r) for r in held_out} <= {tuple(r) for r in matrix}


def _customers(path: Path) -> Path:
    """The churn table as a CRM exports it: a sign-up date, a flag, gaps in spend, and three
    rows whose label is empty (left out before the split)."""
    frame = churn_frame(120)
    rng = np.random.default_rng(3)
    frame.insert(0, "signup", [f"2024-{m % 12 + 1:02d}-{m % 28 + 1:02d}" for m in frame["months"]])
    frame.insert(2, "active", rng.choice([True, False], size=len(frame)))
    frame["spend"] = frame["spend"].where(rng.random(len(frame)) > 0.1)
    frame["churned"] = frame["churned"].astype(object)
    frame.loc[[3, 40, 77], "churned"] = None
    frame.to_csv(path, index=False)
    return path


def test_a_csv_versions_training_matrix_is_rebuilt_from_its_copy(tmp_path: Path) -> None:
    csv = tmp_path / "churn.csv"
    churn_frame().to_csv(csv, index=False)
    models = tmp_path / "models"
    metadata = train_csv(models, csv, "churned", "churn")
    matrix = _assert_rebuilt_as_profiled(models, metadata, "training_copy")
    assert [f.name for f in metadata.features] == ["plan", "months", "spend"]
    assert set(matrix[:, 0]) == {"basic", "pro", "team"}


def test_a_csv_version_with_dates_flags_and_gaps_is_rebuilt(tmp_path: Path) -> None:
    models = tmp_path / "models"
    metadata = train_csv(
        models, _customers(tmp_path / "crm.csv"), "churned", "crm", dates=["signup"]
    )
    assert metadata.training_data is not None
    assert (metadata.training_data.unlabelled_rows, metadata.training_rows) == (3, 87)
    assert {f.name: f.dtype for f in metadata.features} == {
        "signup": "date", "plan": "category", "active": "bool", "months": "int", "spend": "float",
    }  # fmt: skip
    matrix = _assert_rebuilt_as_profiled(models, metadata, "training_copy")
    assert np.isnan(matrix[:, 4].astype(float)).any()  # the gaps are rows too


def test_a_classifier_too_rare_to_stratify_is_rebuilt(tmp_path: Path) -> None:
    """One row of a third class: the split is not stratified, and the rows rebuilt are still
    the ones fitted on."""
    frame = churn_frame()
    frame.loc[5, "churned"] = "maybe"
    csv = tmp_path / "rare.csv"
    frame.to_csv(csv, index=False)
    models = tmp_path / "models"
    metadata = train_csv(models, csv, "churned", "rare")
    assert metadata.training_data is not None
    assert metadata.training_data.split == DataSplit(test_size=0.25, seed=0, stratified=False)
    _assert_rebuilt_as_profiled(models, metadata, "training_copy")


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_split_rows_is_train_test_split_of_the_frame(task: Task) -> None:
    """The parts are those train_test_split takes of the frame itself, as fit_version took them
    before split_rows (stratified by class for a classifier), and the positions its recorded
    split replays."""
    frame = churn_frame().drop(columns=["churned"])
    labels = churn_frame()["churned"] if task == "classification" else frame.pop("spend")
    stratify = labels if task == "classification" else None
    expected = train_test_split(frame, labels, test_size=0.25, random_state=0, stratify=stratify)
    train_x, test_x, train_y, test_y, stratified = split_rows(frame, labels, task)
    assert stratified == (task == "classification")
    pd.testing.assert_frame_equal(train_x, expected[0])
    pd.testing.assert_frame_equal(test_x, expected[1])
    pd.testing.assert_series_equal(train_y, expected[2])
    pd.testing.assert_series_equal(test_y, expected[3])
    assert (len(train_x), len(test_x)) == (90, 30)
    train, test = split_positions(labels, DataSplit(test_size=0.25, seed=0, stratified=stratified))
    assert (train_x.index.tolist(), test_x.index.tolist()) == (train.tolist(), test.tolist())


def _with_data(metadata: ModelMetadata, **changes: Any) -> ModelMetadata:
    assert metadata.training_data is not None
    return metadata.model_copy(
        update={"training_data": metadata.training_data.model_copy(update=changes)}
    )


def _refusals(iris: ModelMetadata) -> dict[str, tuple[ModelMetadata, str]]:
    """Edited copies of iris v1's metadata, and the reason each is refused."""
    assert iris.training_data is not None
    demo = iris.training_data.sources[0]
    feedback = DataSource(kind="feedback", rows=12, sha256="1" * 64)
    retrained = iris.training_data.sources[0].model_copy(update={"rows": 112})
    renamed = iris.features[0].model_copy(update={"name": "sepal_cm"})
    return {
        "no training data": (
            iris.model_copy(update={"training_data": None}),
            r"^iris v1 records no training data \(saved before versions did\)$",
        ),
        "retrained on feedback": (
            _with_data(
                iris,
                sources=[retrained, feedback],
                base_split=iris.training_data.split,
                no_copy_reason=None,
            ),
            r"^iris v1 was retrained: part of its rows are labelled predictions in the "
            r"prediction store, not stored with it$",
        ),
        "retrained on feedback alone": (
            _with_data(iris, sources=[feedback]),
            r"^iris v1 was retrained: ",
        ),
        "other scikit-learn data": (
            _with_data(iris, sources=[demo.model_copy(update={"sha256": "0" * 64})]),
            r"^iris v1: scikit-learn's iris data is not the data the version was trained on ",
        ),
        "a demo this Steward lacks": (
            _with_data(iris, sources=[demo.model_copy(update={"name": "wine"})]),
            r"^iris v1: no demo dataset 'wine' in this Steward$",
        ),
        "other features": (
            iris.model_copy(update={"features": [renamed, *iris.features[1:]]}),
            r"^iris v1: its stored rows do not have its features' columns$",
        ),
        "another training row count": (
            iris.model_copy(update={"training_rows": 100}),
            r"^iris v1: the stored data does not give the rows it was fitted on \(112 training "
            r"rows rebuilt, 100 or 112 recorded\)$",
        ),
        "another split": (
            _with_data(iris, split=DataSplit(test_size=0.5, seed=0, stratified=True)),
            r"^iris v1: the stored data does not give the rows it was fitted on \(75 training "
            r"rows rebuilt, 112 recorded\)$",
        ),
        "a source of no rows": (
            _with_data(iris, sources=[]),
            r"^iris v1: no stored rows for data from nowhere$",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no training data",
        "retrained on feedback",
        "retrained on feedback alone",
        "other scikit-learn data",
        "a demo this Steward lacks",
        "other features",
        "another training row count",
        "another split",
        "a source of no rows",
    ],
)
def test_a_version_whose_rows_are_not_stored_is_refused(demo_models: Path, case: str) -> None:
    iris = read_metadata(demo_models, "iris", 1)
    metadata, reason = _refusals(iris)[case]
    with pytest.raises(ArtifactError, match=reason):
        stored_training_matrix(demo_models, metadata)
    stored_training_matrix(demo_models, iris)  # the version itself still rebuilds


def test_metadata_from_before_training_data_is_refused(tmp_path: Path) -> None:
    old = ModelMetadata.model_validate_json(METADATA_BEFORE_TRAINING_DATA)
    with pytest.raises(ArtifactError, match=r"^line v1 records no training data "):
        stored_training_matrix(tmp_path, old)


def test_a_registered_model_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": np.arange(20.0), "y": np.arange(20.0) % 3})
    labels = (frame["x"] > 9).map({True: "big", False: "small"})
    artifact = tmp_path / "elsewhere.joblib"
    joblib.dump(LogisticRegression().fit(frame.to_numpy(), labels), artifact)
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False)
    models = tmp_path / "models"
    metadata = register_estimator(models, artifact, "sizer", sample)
    with pytest.raises(
        ArtifactError, match=r"^sizer v1 is a registered model: trained elsewhere, on no rows kept$"
    ):
        stored_training_matrix(models, metadata)


def test_a_csv_version_without_a_copy_is_refused(tmp_path: Path) -> None:
    csv = tmp_path / "churn.csv"
    churn_frame().to_csv(csv, index=False)
    models = tmp_path / "models"
    metadata = train_csv(models, csv, "churned", "churn", copy_max_bytes=0)
    with pytest.raises(
        ArtifactError,
        match=r"^churn v1 keeps no copy of its training data \(copies are off "
        r"\(STEWARD_TRAINING_COPY_MAX_BYTES=0\)\)$",
    ):
        stored_training_matrix(models, metadata)


def test_a_tampered_copy_is_refused(tmp_path: Path) -> None:
    csv = tmp_path / "churn.csv"
    churn_frame().to_csv(csv, index=False)
    models = tmp_path / "models"
    metadata = train_csv(models, csv, "churned", "churn")
    copy = models / "churn" / "1" / TRAINING_COPY
    rows = gzip.decompress(copy.read_bytes()).replace(b",pro,", b",team,")  # other plans
    copy.write_bytes(gzip.compress(rows))
    with pytest.raises(ChecksumMismatch, match=rf"^churn v1: sha256 of {TRAINING_COPY} is "):
        stored_training_matrix(models, metadata)
