"""The input contract: specs -> request model -> rows -> matrix; specs from data; probing."""

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, ValidationError
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.features import (
    INT64_MAX,
    FeatureSpec,
    InputContract,
    infer_features,
    probe_features,
    read_frame,
    suspicious_columns,
)

FEATURES = [
    FeatureSpec(name="living area (m2)", dtype="float", min=20, max=400),
    FeatureSpec(name="rooms", dtype="int", min=1, max=9),
    FeatureSpec(name="city", dtype="category", categories=["Lyon", "Paris"]),
]
ROW = {"living area (m2)": 80.5, "rooms": 3, "city": "Paris"}


def contract(features: list[FeatureSpec] = FEATURES, multiple: float = 10) -> InputContract:
    return InputContract.build(
        "house-price", 3, features, max_instances=10, range_multiple=multiple
    )


def validate(c: InputContract, *rows: dict[str, Any]) -> BaseModel:
    return c.request_model.model_validate({"instances": list(rows)})


def refusal(c: InputContract, row: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        validate(c, row)
    (error,) = info.value.errors()
    return dict(error)


def test_fields_are_the_features_in_order() -> None:
    c = contract()
    assert c.rows(validate(c, ROW)) == [(80.5, 3, "Paris")]


def test_json_schema_names_each_feature_and_its_rules() -> None:
    schema = contract().request_model.model_json_schema()
    instance = schema["$defs"]["Instance"]
    assert list(instance["properties"]) == ["living area (m2)", "rooms", "city"]
    assert instance["required"] == ["living area (m2)", "rooms", "city"]
    assert instance["additionalProperties"] is False
    assert instance["properties"]["city"]["enum"] == ["Lyon", "Paris"]
    area = instance["properties"]["living area (m2)"]
    assert "training range [20, 400]" in area["description"]
    assert (area["minimum"], area["maximum"]) == (20 - 3800, 400 + 3800)  # 10 spans of 380
    rooms = instance["properties"]["rooms"]
    assert (rooms["type"], rooms["minimum"], rooms["maximum"]) == ("integer", -79, 89)
    assert schema["properties"]["instances"]["maxItems"] == 10


def test_descriptions_say_what_each_kind_accepts() -> None:
    features = [
        FeatureSpec(name="b", dtype="bool", min=0, max=1),
        FeatureSpec(name="d", dtype="date", min=19723, max=19724),
    ]
    properties = contract(features).request_model.model_json_schema()["$defs"]["Instance"][
        "properties"
    ]
    assert properties["b"]["description"] == "bool"
    assert properties["d"]["description"] == (
        "date; training range [2024-01-01, 2024-01-02]; accepted [2013-12-31, 2034-01-01]"
    )


@pytest.mark.parametrize(
    ("field", "value", "error_type"),
    [
        ("city", "Berlin", "unknown_category"),
        ("city", 1, "string_type"),
        ("city", None, "string_type"),
        ("rooms", 2.5, "int_type"),
        ("rooms", "3", "int_type"),
        ("rooms", True, "int_type"),
        ("rooms", float("inf"), "int_type"),
        ("rooms", 2**63, "less_than_equal"),
        ("rooms", 10**400, "less_than_equal"),
        ("rooms", -(2**70), "greater_than_equal"),
        ("living area (m2)", float("nan"), "finite_number"),
        ("living area (m2)", "80", "float_type"),
        ("living area (m2)", 1e308, "less_than_equal"),
        ("living area (m2)", -1.7976931348623157e308, "greater_than_equal"),
        ("living area (m2)", 2**70, "less_than_equal"),
    ],
)
def test_wrong_values_are_refused_naming_the_feature(
    field: str, value: object, error_type: str
) -> None:
    error = refusal(contract(), {**ROW, field: value})
    assert error["loc"] == ("instances", 0, field)
    assert error["type"] == error_type


def test_an_int_feature_takes_whole_numbers_written_as_floats() -> None:
    c = contract()
    assert c.rows(validate(c, {**ROW, "rooms": 3.0})) == [(80.5, 3, "Paris")]


def test_int_features_stay_within_64_bits_even_with_no_range_policy() -> None:
    c = contract(multiple=0)
    assert c.rows(validate(c, {**ROW, "rooms": INT64_MAX}))[0][1] == INT64_MAX
    assert refusal(c, {**ROW, "rooms": INT64_MAX + 1})["type"] == "less_than_equal"
    assert c.rows(validate(c, {**ROW, "living area (m2)": 1e308}))[0][0] == 1e308


def test_values_at_the_edge_of_the_accepted_range_pass() -> None:
    c = contract()
    assert validate(c, {**ROW, "living area (m2)": 4200.0, "rooms": 89})
    assert refusal(c, {**ROW, "living area (m2)": 4200.001})["type"] == "less_than_equal"


def test_a_constant_feature_is_widened_by_its_magnitude() -> None:
    c = contract([FeatureSpec(name="k", dtype="float", min=5, max=5)])
    assert validate(c, {"k": 55.0})
    assert refusal(c, {"k": 55.1})["type"] == "less_than_equal"


def test_unknown_category_error_is_short_and_does_not_echo_the_value() -> None:
    categories = [f"customer-{i:05d}" for i in range(10_000)]
    c = contract([FeatureSpec(name="who", dtype="category", categories=categories)])
    error = refusal(c, {"who": "<script>alert(1)</script>"})
    assert error["type"] == "unknown_category"
    assert "10000 categories" in error["msg"]
    assert "customer-00000" in error["msg"]
    assert "script" not in error["msg"]
    assert len(error["msg"]) < 200


def test_nullable_features_take_null_or_nothing_and_reach_the_model_as_nan() -> None:
    features = [
        FeatureSpec(name="x", dtype="float", min=0, max=1, nullable=True),
        FeatureSpec(name="flag", dtype="bool", nullable=True),
        FeatureSpec(name="city", dtype="category", categories=["a"], nullable=True),
    ]
    c = contract(features)
    rows = c.rows(validate(c, {"x": None, "flag": None}, {"x": 0.5, "flag": True, "city": "a"}))
    assert rows == [(None, None, None), (0.5, True, "a")]
    matrix = c.matrix(rows)
    assert matrix.dtype == object
    assert all(isinstance(v, float) and math.isnan(v) for v in matrix[0])
    assert list(matrix[1]) == [0.5, 1.0, "a"]


def test_not_nullable_features_refuse_null_and_omission() -> None:
    assert refusal(contract(), {**ROW, "rooms": None})["type"] == "int_type"
    omitted = {k: v for k, v in ROW.items() if k != "rooms"}
    assert refusal(contract(), omitted)["type"] == "missing"


def test_open_categories_take_unseen_values_up_to_a_length() -> None:
    c = contract([FeatureSpec(name="c", dtype="category", categories=["a"], open_categories=True)])
    assert c.rows(validate(c, {"c": "never seen"})) == [("never seen",)]
    assert refusal(c, {"c": "x" * 100_000})["type"] == "string_too_long"


def test_booleans_take_json_booleans_and_reach_the_model_as_numbers() -> None:
    c = contract([FeatureSpec(name="b", dtype="bool", min=0, max=1)])
    rows = c.rows(validate(c, {"b": True}, {"b": False}))
    assert c.matrix(rows).tolist() == [[1.0], [0.0]]
    assert c.matrix(rows).dtype == np.float64
    assert refusal(c, {"b": "True"})["type"] == "bool_type"


def test_dates_take_iso_dates_and_reach_the_model_as_days() -> None:
    c = contract([FeatureSpec(name="d", dtype="date", min=0, max=10)])
    rows = c.rows(validate(c, {"d": "1970-01-03"}, {"d": "1970-01-01T12:00:00+00:00"}))
    assert c.matrix(rows).tolist() == [[2.0], [0.5]]
    assert refusal(c, {"d": "next tuesday"})["loc"] == ("instances", 0, "d")


def test_dates_are_accepted_within_a_multiple_of_a_year_at_least() -> None:
    """Trained on ten days of 1970: ten spans of at least a year on each side are accepted."""
    c = contract([FeatureSpec(name="d", dtype="date", min=0, max=10)])
    assert validate(c, {"d": "1979-12-31"}, {"d": "1960-01-02"})
    error = refusal(c, {"d": "9999-12-31"})
    assert error["type"] == "date_range"
    assert error["msg"] == "must be between 1960-01-01 and 1980-01-11"
    assert refusal(c, {"d": "0001-01-01"})["type"] == "date_range"
    unbounded = contract([FeatureSpec(name="d", dtype="date", min=0, max=10)], multiple=0)
    assert validate(unbounded, {"d": "9999-12-31"})


def test_nullable_numbers_reach_a_float_array_as_nan_without_a_converter() -> None:
    c = contract([FeatureSpec(name="x", dtype="float", min=0, max=1, nullable=True)])
    assert c.converters == ()
    matrix = c.matrix(c.rows(validate(c, {"x": None}, {})))
    assert matrix.dtype == np.float64
    assert np.isnan(matrix).all()


def test_outside_training_range_names_each_value() -> None:
    c = contract()
    details = c.outside_training_range([(80.5, 3, "Paris"), (500.0, 0, "Lyon")])
    assert [d["field"] for d in details] == ["instances.1.living area (m2)", "instances.1.rooms"]
    assert details[0]["message"] == "outside the training range [20, 400]"


# --- specs from data ------------------------------------------------------------------------


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
    c = contract(features, multiple=0)
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
