"""Surveying data for a contract: specs from frames, suspicious columns, probing the model."""

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.feature_survey import infer_features, probe_features, read_frame, suspicious_columns
from app.features import FeatureSpec, InputContract


def contract(features: list[FeatureSpec]) -> InputContract:
    return InputContract.build("survey", 1, features)


def test_infer_features_from_a_csv_frame() -> None:
    raw = pd.DataFrame(
        {
            "n": [1, 2, 3],
            "x": [0.5, None, 2.0],
            "ok": [True, False, True],
            "maybe": [True, None, False],
            "city": ["Lyon", None, "Paris"],
            "day": ["2024-01-01", "2024-01-02", None],
        }
    )
    frame = read_frame(raw, dates=["day"])
    specs = {f.name: f for f in infer_features(frame, dates=["day"])}
    assert {n: s.dtype for n, s in specs.items()} == {
        "n": "int",
        "x": "float",
        "ok": "bool",
        "maybe": "bool",
        "city": "category",
        "day": "date",
    }
    assert (specs["x"].min, specs["x"].max) == (0.5, 2.0)
    assert specs["city"].categories == ["Lyon", "Paris"]
    assert (specs["day"].min, specs["day"].max) == (19723.0, 19724.0)
    assert frame["maybe"].tolist() == [True, None, False]


def test_identifiers_and_undeclared_dates_are_flagged() -> None:
    rows = 40
    frame = pd.DataFrame(
        {
            "customer": [f"c-{i:04x}" for i in range(rows)],
            "order_id": range(rows),
            "signup": [f"2024-02-{i % 28 + 1:02d}" for i in range(rows)],
            "city": ["Lyon", "Paris"] * (rows // 2),
            "amount": np.linspace(1, 2, rows),  # all distinct, but a measurement
        }
    )
    found = suspicious_columns(frame)
    assert set(found) == {"customer", "order_id", "signup"}
    assert "--drop" in found["customer"]
    assert "--date" in found["signup"]


def test_few_rows_say_nothing_about_identifiers() -> None:
    frame = pd.DataFrame({"name": ["a", "b", "c"]})
    assert suspicious_columns(frame) == {}


def _fitted(pipeline: Any, features: list[FeatureSpec], frame: pd.DataFrame) -> InputContract:
    c = contract(features)
    pipeline.fit(c.matrix(list(frame.itertuples(index=False, name=None))), [0, 1] * 10)
    return c


def test_probing_opens_what_the_model_handles() -> None:
    frame = pd.DataFrame({"x": np.linspace(0, 1, 20), "c": ["a", "b"] * 10})
    features = infer_features(frame)
    handles_all = make_pipeline(
        ColumnTransformer(
            [
                ("x", SimpleImputer(), [0]),
                (
                    "c",
                    make_pipeline(
                        SimpleImputer(strategy="most_frequent"),
                        OneHotEncoder(handle_unknown="ignore"),
                    ),
                    [1],
                ),
            ]
        ),
        LogisticRegression(),
    )
    c = _fitted(handles_all, features, frame)
    probed = probe_features(c, handles_all, (0.5, "a"))
    assert [(f.nullable, f.open_categories) for f in probed] == [(True, False), (True, True)]


def test_probing_keeps_closed_what_the_model_refuses() -> None:
    frame = pd.DataFrame({"x": np.linspace(0, 1, 20), "c": ["a", "b"] * 10})
    features = infer_features(frame)
    strict = make_pipeline(
        ColumnTransformer([("x", StandardScaler(), [0]), ("c", OneHotEncoder(), [1])]),
        LogisticRegression(),
    )
    c = _fitted(strict, features, frame)
    probed = probe_features(c, strict, (0.5, "a"))
    assert [(f.nullable, f.open_categories) for f in probed] == [(False, False), (False, False)]


def test_probing_a_model_with_text_labels_that_takes_missing_values() -> None:
    # Its predictions are a NumPy array of strings: there is no NaN to look for in them, and
    # asking NumPy for their float value raised, which stopped `steward register`.
    frame = pd.DataFrame({"x": np.linspace(0, 1, 20), "y": np.linspace(1, 0, 20)})
    features = infer_features(frame)
    c = contract(features)
    model = HistGradientBoostingClassifier(max_iter=5)
    model.fit(c.matrix(list(frame.itertuples(index=False, name=None))), ["no", "yes"] * 10)
    assert model.predict(c.matrix([(0.5, 0.5)])).dtype.kind == "U"
    probed = probe_features(c, model, (0.5, 0.5))
    assert [f.nullable for f in probed] == [True, True]
