"""The input contract: specs -> request model -> rows -> matrix; specs from data; probing."""

import math
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from app.features import (
    INT64_MAX,
    FeatureSpec,
    InputContract,
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
