"""Training and registering versions, then serving them: the whole path, real models."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import assert_error

from app.artifacts import ARTIFACT, read_aliases, read_metadata, sha256_bytes
from app.drift import QUANTILE_PROBABILITIES
from app.errors import ArtifactError
from app.main import create_app
from app.settings import Settings
from app.training import train_csv


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
    rng = np.random.default_rng(0)
    plan = rng.choice(["basic", "pro", "team"], size=rows)
    months = rng.integers(1, 48, size=rows)
    spend = rng.normal(50, 15, size=rows).round(2)
    churned = np.where((plan == "basic") & (months < 12), "yes", "no")
    pd.DataFrame({"plan": plan, "months": months, "spend": spend, "churned": churned}).to_csv(
        path, index=False
    )
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
