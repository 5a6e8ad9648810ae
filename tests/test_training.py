"""Training and registering versions, then serving them: the whole path, real models."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import assert_error, churn_frame
from sklearn import datasets
from sklearn.base import clone
from sklearn.model_selection import train_test_split

from app.aliases import read_aliases
from app.artifacts import (
    ARTIFACT,
    METADATA,
    TRAINING_COPY,
    ChecksumMismatch,
    DataSource,
    DataSplit,
    TrainingData,
    load_estimator,
    read_metadata,
    sha256_bytes,
)
from app.drift import QUANTILE_PROBABILITIES
from app.errors import ArtifactError
from app.main import create_app
from app.settings import Settings
from app.training import DEMOS, train_csv
from app.training_data import demo_training_frame, training_copy


def test_demo_models_metadata(demo_models: Path) -> None:
    iris = read_metadata(demo_models, "iris", 1)
    assert iris.task == "classification"
    assert iris.classes == ["setosa", "versicolor", "virginica"]
    assert iris.has_proba
    assert [f.name for f in iris.features] == [
        "sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm",
    ]  # fmt: skip
    assert all(
        f.dtype == "float" and f.min is not None and f.max is not None for f in iris.features
    )
    assert iris.metrics["accuracy"] > 0.9
    assert iris.training_rows == 112
    profile = iris.reference_profile["petal_length_cm"]
    assert profile.probabilities == list(QUANTILE_PROBABILITIES)
    assert profile.quantiles is not None
    assert profile.quantiles == sorted(profile.quantiles)
    assert iris.sha256 == sha256_bytes((demo_models / "iris" / "1" / ARTIFACT).read_bytes())

    cancer = read_metadata(demo_models, "breast-cancer", 1)
    assert (cancer.task, cancer.has_proba) == ("classification", False)
    assert sorted(cancer.classes or []) == ["benign", "malignant"]
    assert cancer.metrics["accuracy"] > 0.9

    diabetes = read_metadata(demo_models, "diabetes", 1)
    assert (diabetes.task, diabetes.classes) == ("regression", None)
    assert set(diabetes.metrics) == {"mae", "rmse", "r2"}
    assert diabetes.metrics["r2"] > 0.2


def _churn_csv(path: Path, rows: int = 120) -> Path:
    churn_frame(rows).to_csv(path, index=False)
    return path


def test_train_csv_with_categorical_features_and_serve_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    metadata = train_csv(models, _churn_csv(tmp_path / "churn.csv"), "churned", "churn")
    assert metadata.task == "classification"
    assert metadata.classes == ["no", "yes"]
    features = {f.name: f for f in metadata.features}
    assert features["plan"].dtype == "category"
    assert features["plan"].categories == ["basic", "pro", "team"]
    # The default pipeline imputes every column and one-hot encodes with handle_unknown="ignore".
    assert features["plan"].open_categories
    assert all(f.nullable for f in metadata.features)
    assert features["months"].dtype == "int"
    assert features["spend"].dtype == "float"
    assert metadata.reference_profile["plan"].frequencies is not None
    assert read_aliases(models, "churn") == {"production": 1}

    settings = Settings(models_dir=models, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        row = {"plan": "basic", "months": 3, "spend": 20.0}
        response = client.post("/predict", json={"instances": [row]})  # the only model
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["prediction"] in {"yes", "no"}
        unseen = {"plan": "gold", "months": 3.0, "spend": None}  # new plan, int as 3.0, missing
        assert client.post("/predict/churn", json={"instances": [unseen]}).status_code == 200
        bad = client.post("/predict/churn", json={"instances": [{**row, "months": 3.5}]})
        error = assert_error(bad, 422, "validation_error")
        assert error["details"][0]["field"] == "instances.0.months"


def test_train_csv_regression_is_inferred(tmp_path: Path) -> None:
    x = np.linspace(0, 10, 50)
    path = tmp_path / "line.csv"
    pd.DataFrame({"x": x, "y": 3 * x + 1}).to_csv(path, index=False)
    metadata = train_csv(tmp_path / "models", path, "y", "line")
    assert metadata.task == "regression"
    assert metadata.metrics["r2"] > 0.99


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing-target", "no column 'nope'"),
        ("too-few-rows", "at least 10"),
        ("bad-name", "invalid model name"),
    ],
)
def test_train_csv_errors(tmp_path: Path, setup: str, message: str) -> None:
    path = _churn_csv(tmp_path / "churn.csv", rows=5 if setup == "too-few-rows" else 120)
    target = "nope" if setup == "missing-target" else "churned"
    name = "Bad Name" if setup == "bad-name" else "churn"
    with pytest.raises(ArtifactError, match=message):
        train_csv(tmp_path / "models", path, target, name)


def _customers_csv(path: Path, rows: int = 80) -> Path:
    """Customers as a CRM exports them: an id, a sign-up date, a flag, gaps."""
    rng = np.random.default_rng(1)
    months = rng.integers(1, 48, size=rows)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:06d}" for i in range(rows)],
            "signup": [f"2024-{m % 12 + 1:02d}-{d % 28 + 1:02d}" for m, d in enumerate(months)],
            "plan": rng.choice(["basic", "pro"], size=rows),
            "active": rng.choice([True, False], size=rows),
            "months": months,
            "spend": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(50, 15, size=rows)),
        }
    )
    frame["churned"] = np.where(frame["months"] < 12, "yes", "no")
    frame.to_csv(path, index=False)
    return path


def test_train_csv_refuses_identifiers_and_undeclared_dates(tmp_path: Path) -> None:
    csv = _customers_csv(tmp_path / "customers.csv")
    with pytest.raises(ArtifactError) as info:
        train_csv(tmp_path / "models", csv, "churned", "churn")
    message = str(info.value)
    assert "'customer_id' looks like an identifier" in message
    assert "'signup' looks like a date" in message
    assert "--drop" in message
    assert "--date" in message
    with pytest.raises(ArtifactError, match="name no feature column: nope"):
        train_csv(tmp_path / "models", csv, "churned", "churn", drop=["nope"])
    assert not (tmp_path / "models").exists()


def test_train_csv_serves_dates_booleans_whole_floats_and_gaps(tmp_path: Path) -> None:
    models = tmp_path / "models"
    csv = _customers_csv(tmp_path / "customers.csv")
    metadata = train_csv(models, csv, "churned", "churn", drop=["customer_id"], dates=["signup"])
    kinds = {f.name: f.dtype for f in metadata.features}
    assert kinds == {
        "signup": "date", "plan": "category", "active": "bool", "months": "int", "spend": "float",
    }  # fmt: skip
    settings = Settings(models_dir=models, data_dir=tmp_path / "data")
    row = {"signup": "2025-06-01", "plan": "basic", "active": True, "months": 3, "spend": 20.0}
    with TestClient(create_app(settings)) as client:

        def post(instance: dict[str, object]) -> int:
            return client.post("/predict/churn", json={"instances": [instance]}).status_code

        assert post(row) == 200
        assert post({**row, "months": 3.0}) == 200  # a whole number written as a float
        assert post({**row, "plan": "enterprise"}) == 200  # unseen: one-hot ignores it
        assert post({**row, "spend": None}) == 200  # imputed
        assert post({k: v for k, v in row.items() if k != "spend"}) == 200  # omitted: imputed
        assert post({**row, "signup": "2025-06-01T08:30:00+02:00"}) == 200
        assert post({**row, "active": "True"}) == 422  # booleans are JSON booleans
        assert post({**row, "signup": "soon"}) == 422
        assert post({**row, "months": 3.5}) == 422
        assert post({**row, "months": 2**63}) == 422
        assert post({**row, "customer_id": "C000001"}) == 422  # dropped: not a feature


def test_demo_versions_record_their_dataset(demo_models: Path) -> None:
    iris = read_metadata(demo_models, "iris", 1)
    assert iris.training_data is not None
    (source,) = iris.training_data.sources
    assert iris.training_data == TrainingData(
        sources=[DataSource(kind="demo", name="iris", rows=150, sha256=source.sha256)],
        rows=150,
        training_rows=112,
        held_out_rows=38,
        split=DataSplit(test_size=0.25, seed=0, stratified=True),
        no_copy_reason="a demo: rebuilt from scikit-learn's bundled data",
    )
    diabetes = read_metadata(demo_models, "diabetes", 1).training_data
    assert diabetes is not None
    assert [(s.kind, s.name, s.rows) for s in diabetes.sources] == [("demo", "diabetes", 442)]
    assert (diabetes.training_rows, diabetes.held_out_rows) == (331, 111)
    assert diabetes.split == DataSplit(test_size=0.25, seed=0, stratified=False)
    assert not (demo_models / "iris" / "1" / TRAINING_COPY).exists()


def test_a_demo_versions_rows_are_rebuilt_as_trained(demo_models: Path) -> None:
    """The rebuilt rows are scikit-learn's, their digest is the one recorded at training, and
    the recorded split of them refits the saved model."""
    iris = read_metadata(demo_models, "iris", 1)
    frame, labels = demo_training_frame(iris, DEMOS)
    bundled = datasets.load_iris()
    assert frame.to_numpy().tolist() == bundled.data.tolist()
    assert labels.tolist() == bundled.target_names[bundled.target].tolist()
    assert iris.training_data is not None
    rows_csv = frame.assign(target=labels).to_csv(index=False).encode()
    assert hashlib.sha256(rows_csv).hexdigest() == iris.training_data.sources[0].sha256
    split = iris.training_data.split
    assert split is not None
    train_x, _, train_y, _ = train_test_split(
        frame, labels, test_size=split.test_size, random_state=split.seed, stratify=labels
    )
    assert len(train_x) == iris.training_data.training_rows
    saved = load_estimator(demo_models, iris)
    refitted = clone(saved).fit(train_x.to_numpy(), train_y.to_numpy())
    # equal but for float rounding (the saved model was fitted on the contract's matrix)
    np.testing.assert_allclose(refitted[-1].coef_, saved[-1].coef_, rtol=1e-9)


def test_a_demo_version_whose_data_changed_is_not_rebuilt(demo_models: Path) -> None:
    iris = read_metadata(demo_models, "iris", 1)
    assert iris.training_data is not None
    other = DataSource(kind="demo", name="iris", rows=150, sha256="0" * 64)
    changed = iris.model_copy(
        update={"training_data": iris.training_data.model_copy(update={"sources": [other]})}
    )
    with pytest.raises(ArtifactError, match=r"^iris v1: scikit-learn's iris data is not the"):
        demo_training_frame(changed, DEMOS)
    unknown = iris.training_data.model_copy(
        update={"sources": [DataSource(kind="demo", name="wine", rows=178)]}
    )
    with pytest.raises(ArtifactError, match=r"^iris v1: no demo dataset 'wine' in this Steward$"):
        demo_training_frame(iris.model_copy(update={"training_data": unknown}), DEMOS)
    with pytest.raises(ArtifactError, match=r"^iris v1 was not trained on a demo dataset$"):
        demo_training_frame(iris.model_copy(update={"training_data": None}), DEMOS)


def _customers_with_gaps(path: Path) -> Path:
    """The CRM export with three rows whose target is empty."""
    frame = pd.read_csv(_customers_csv(path))
    frame["churned"] = frame["churned"].astype(object)
    frame.loc[[3, 40, 77], "churned"] = None
    frame.to_csv(path, index=False)
    return path


def test_a_csv_version_keeps_a_copy_of_its_rows(tmp_path: Path) -> None:
    models = tmp_path / "models"
    csv = _customers_with_gaps(tmp_path / "customers.csv")
    metadata = train_csv(models, csv, "churned", "churn", drop=["customer_id"], dates=["signup"])
    copy = models / "churn" / "1" / TRAINING_COPY
    compressed = copy.read_bytes()
    assert metadata.training_data == TrainingData(
        sources=[
            DataSource(
                kind="csv",
                name="customers.csv",
                rows=77,
                sha256=sha256_bytes(gzip.decompress(compressed)),
            )
        ],
        rows=77,
        training_rows=57,
        held_out_rows=20,
        split=DataSplit(test_size=0.25, seed=0, stratified=True),
        target="churned",
        dropped=["customer_id"],
        dates=["signup"],
        unlabelled_rows=3,
        copy_file=TRAINING_COPY,
        copy_sha256=sha256_bytes(compressed),
        copy_bytes=len(compressed),
    )
    assert read_metadata(models, "churn", 1) == metadata
    assert str(tmp_path) not in (models / "churn" / "1" / METADATA).read_text()  # no path

    given = pd.read_csv(csv).drop(columns=["customer_id"]).dropna(subset=["churned"])
    given = given.reset_index(drop=True)
    frame, labels = training_copy(models, metadata)
    pd.testing.assert_frame_equal(frame, given.drop(columns=["churned"]))
    pd.testing.assert_series_equal(labels, given["churned"])


def test_the_copy_is_kept_up_to_the_cap(tmp_path: Path) -> None:
    models = tmp_path / "models"
    csv = _churn_csv(tmp_path / "churn.csv")
    first = train_csv(models, csv, "churned", "churn")
    assert first.training_data is not None
    assert first.training_data.copy_bytes is not None
    size = first.training_data.copy_bytes
    at_cap = train_csv(models, csv, "churned", "churn", copy_max_bytes=size)
    assert at_cap.training_data is not None
    assert at_cap.training_data.copy_sha256 == first.training_data.copy_sha256  # same bytes

    over = train_csv(models, csv, "churned", "churn", copy_max_bytes=size - 1)
    assert over.training_data is not None
    assert over.training_data.model_dump(include={"copy_file", "copy_sha256", "copy_bytes"}) == {
        "copy_file": None, "copy_sha256": None, "copy_bytes": None,
    }  # fmt: skip
    assert over.training_data.no_copy_reason == (
        f"{size} bytes compressed, over the cap of {size - 1} (STEWARD_TRAINING_COPY_MAX_BYTES)"
    )
    assert over.training_data.sources == first.training_data.sources  # same rows, same digest
    assert sorted(p.name for p in (models / "churn" / "3").iterdir()) == [
        METADATA, ARTIFACT, "twin.onnx"
    ]  # fmt: skip
    with pytest.raises(ArtifactError, match=r"^churn v3 keeps no copy of its training data \("):
        training_copy(models, over)


def test_a_tampered_or_missing_copy_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    metadata = train_csv(models, _churn_csv(tmp_path / "churn.csv"), "churned", "churn")
    copy = models / "churn" / "1" / TRAINING_COPY
    rows = gzip.decompress(copy.read_bytes()).replace(b",yes", b",no")  # relabel every churner
    copy.write_bytes(gzip.compress(rows))
    with pytest.raises(ChecksumMismatch) as info:
        training_copy(models, metadata)
    assert str(info.value).startswith(f"churn v1: sha256 of {TRAINING_COPY} is ")
    assert "\n" not in str(info.value)
    # Copy and metadata changed together: the copy's digest holds, its rows' digest does not.
    assert metadata.training_data is not None
    edited = metadata.training_data.model_copy(
        update={"copy_sha256": sha256_bytes(copy.read_bytes())}
    )
    with pytest.raises(ArtifactError, match=r"^churn v1: training.csv.gz does not hold the rows"):
        training_copy(models, metadata.model_copy(update={"training_data": edited}))
    copy.write_bytes(b"plan,months\n")  # not gzip at all
    edited = edited.model_copy(update={"copy_sha256": sha256_bytes(b"plan,months\n")})
    with pytest.raises(ArtifactError, match=r"^churn v1: training.csv.gz is not gzip data$"):
        training_copy(models, metadata.model_copy(update={"training_data": edited}))
    copy.unlink()
    with pytest.raises(ArtifactError, match=f"^churn v1: {TRAINING_COPY} is missing$"):
        training_copy(models, metadata)
    demo = metadata.model_copy(
        update={"training_data": TrainingData(sources=[DataSource(kind="demo", rows=1)])}
    )
    with pytest.raises(ArtifactError, match=r"^churn v1 was not trained from a CSV file$"):
        training_copy(models, demo)
