"""Registering models trained elsewhere, then serving them: real estimators, real files."""

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import assert_error
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

from app.artifacts import ARTIFACT, METADATA, DataSource, TrainingData
from app.errors import ArtifactError
from app.main import create_app
from app.registration import register_estimator
from app.settings import Settings


def test_register_a_dataframe_model_trained_elsewhere(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "colour": ["red", "blue", "green", "red", "blue", "green"] * 5,
            "size": np.arange(30, dtype=float),
        }
    )
    labels = (frame["size"] > 15).map({True: "big", False: "small"})
    estimator = Pipeline(
        [
            (
                "prep",
                ColumnTransformer([("c", OneHotEncoder(), ["colour"])], remainder="passthrough"),
            ),
            ("model", RandomForestClassifier(n_estimators=5, random_state=0)),
        ]
    ).fit(frame, labels)
    artifact = tmp_path / "elsewhere.joblib"
    joblib.dump(estimator, artifact)
    sample = tmp_path / "sample.csv"
    frame.assign(unused=1).to_csv(sample, index=False)

    models = tmp_path / "models"
    metadata = register_estimator(models, artifact, "sizer", sample)
    assert metadata.input_format == "dataframe"
    assert metadata.classes == ["big", "small"]
    assert [f.name for f in metadata.features] == ["colour", "size"]
    colour = metadata.features[0]
    assert not colour.open_categories  # OneHotEncoder() refuses unseen values: closed
    assert not colour.nullable

    settings = Settings(models_dir=models, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/predict/sizer", json={"instances": [{"colour": "red", "size": 29}]}
        )
        assert response.status_code == 200, response.text
        unseen = client.post(
            "/predict/sizer", json={"instances": [{"colour": "mauve", "size": 29}]}
        )
        assert assert_error(unseen, 422, "validation_error")["details"][0]["type"] == (
            "unknown_category"
        )
    prediction = response.json()["predictions"][0]
    assert prediction["prediction"] == "big"
    assert set(prediction["probabilities"]) == {"big", "small"}


def test_register_an_array_model(tmp_path: Path) -> None:
    x = np.arange(40, dtype=float).reshape(20, 2)
    artifact = tmp_path / "model.joblib"
    joblib.dump(LinearRegression().fit(x, x[:, 0] * 2), artifact)
    sample = tmp_path / "sample.csv"
    pd.DataFrame(x, columns=["a", "b"]).to_csv(sample, index=False)
    metadata = register_estimator(tmp_path / "models", artifact, "doubler", sample)
    assert (metadata.task, metadata.input_format) == ("regression", "array")


def test_register_refuses_what_does_not_fit(tmp_path: Path) -> None:
    x = np.arange(40, dtype=float).reshape(20, 2)
    artifact = tmp_path / "model.joblib"
    joblib.dump(LinearRegression().fit(x, x[:, 0]), artifact)
    three_columns = tmp_path / "three.csv"
    pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]}).to_csv(three_columns, index=False)
    with pytest.raises(ArtifactError, match="expects 2 features"):
        register_estimator(tmp_path / "models", artifact, "m", three_columns)
    text = tmp_path / "text.csv"
    pd.DataFrame({"a": ["x"], "b": ["y"]}).to_csv(text, index=False)
    with pytest.raises(ArtifactError, match="does not accept"):
        register_estimator(tmp_path / "models", artifact, "m", text)
    not_a_model = tmp_path / "dict.joblib"
    joblib.dump({"not": "a model"}, not_a_model)
    with pytest.raises(ArtifactError, match="not a scikit-learn"):
        register_estimator(tmp_path / "models", not_a_model, "m", three_columns)
    assert not (tmp_path / "models").exists()


def test_register_opens_what_the_pipeline_handles(tmp_path: Path) -> None:
    """A pipeline that imputes and ignores unseen categories accepts null and new values,
    though the sample holds neither."""
    frame = pd.DataFrame({"colour": ["red", "blue", "green"] * 10, "size": np.arange(30.0)})
    labels = (frame["size"] > 15).map({True: "big", False: "small"})
    prepare = ColumnTransformer(
        [
            (
                "c",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                ["colour"],
            ),
            ("n", SimpleImputer(), ["size"]),
        ]
    )
    estimator = make_pipeline(prepare, LogisticRegression()).fit(frame, labels)
    artifact = tmp_path / "tolerant.joblib"
    joblib.dump(estimator, artifact)
    sample = tmp_path / "sample.csv"
    frame.head(5).to_csv(sample, index=False)
    metadata = register_estimator(tmp_path / "models", artifact, "tolerant", sample)
    colour, size = metadata.features
    assert (colour.open_categories, colour.nullable, size.nullable) == (True, True, True)

    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        rows = [{"colour": "mauve", "size": 29.0}, {"colour": None}, {"size": 3.0}]
        response = client.post("/predict/tolerant", json={"instances": rows})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 3


def test_a_registered_version_records_its_sample_and_no_training_data(tmp_path: Path) -> None:
    x = np.arange(40, dtype=float).reshape(20, 2)
    artifact = tmp_path / "model.joblib"
    joblib.dump(LinearRegression().fit(x, x[:, 0] * 2), artifact)
    sample = tmp_path / "inputs.csv"
    pd.DataFrame(x, columns=["a", "b"]).assign(doubled=x[:, 0] * 2).to_csv(sample, index=False)
    models = tmp_path / "models"
    metadata = register_estimator(models, artifact, "doubler", sample, target="doubled")
    assert metadata.training_data == TrainingData(
        sources=[DataSource(kind="sample", name="inputs.csv", rows=20)],
        rows=20,
        target="doubled",
        no_copy_reason="registered: trained elsewhere, Steward holds no training data",
    )
    assert (metadata.training_data.training_rows, metadata.training_data.split) == (0, None)
    assert sorted(p.name for p in (models / "doubler" / "1").iterdir()) == [
        METADATA, ARTIFACT, "twin.onnx",
    ]  # fmt: skip
