"""Per-model request models built from metadata."""

import pytest
from pydantic import ValidationError

from app.artifacts import FeatureSpec, ModelMetadata
from app.schemas import build_request_model

METADATA = ModelMetadata(
    name="house-price",
    version=3,
    task="regression",
    features=[
        FeatureSpec(name="living area (m2)", dtype="float", min=20, max=400),
        FeatureSpec(name="rooms", dtype="int", min=1, max=9),
        FeatureSpec(name="city", dtype="category", categories=["Lyon", "Paris"]),
    ],
)
ROW = {"living area (m2)": 80.5, "rooms": 3, "city": "Paris"}


def test_fields_are_the_features_in_order() -> None:
    model = build_request_model(METADATA, max_instances=10)
    request = model.model_validate({"instances": [ROW]})
    (instance,) = request.instances  # type: ignore[attr-defined]
    assert tuple(vars(instance).values()) == (80.5, 3, "Paris")


def test_json_schema_names_each_feature() -> None:
    schema = build_request_model(METADATA, max_instances=10).model_json_schema()
    instance = schema["$defs"]["HousePriceInstance"]
    assert list(instance["properties"]) == ["living area (m2)", "rooms", "city"]
    assert instance["required"] == ["living area (m2)", "rooms", "city"]
    assert instance["additionalProperties"] is False
    assert instance["properties"]["city"]["enum"] == ["Lyon", "Paris"]
    assert "training range [20, 400]" in instance["properties"]["living area (m2)"]["description"]
    assert schema["properties"]["instances"]["maxItems"] == 10


@pytest.mark.parametrize(
    ("field", "value", "error_type"),
    [
        ("city", "Berlin", "literal_error"),
        ("city", 1, "literal_error"),
        ("rooms", 2.5, "int_type"),
        ("rooms", "3", "int_type"),
        ("rooms", True, "int_type"),
        ("living area (m2)", float("nan"), "finite_number"),
        ("living area (m2)", "80", "float_type"),
    ],
)
def test_wrong_values_are_refused_naming_the_feature(
    field: str, value: object, error_type: str
) -> None:
    model = build_request_model(METADATA, max_instances=10)
    with pytest.raises(ValidationError) as info:
        model.model_validate({"instances": [{**ROW, field: value}]})
    (error,) = info.value.errors()
    assert error["loc"] == ("instances", 0, field)
    assert error["type"] == error_type


def test_internal_field_names_are_not_accepted() -> None:
    model = build_request_model(METADATA, max_instances=10)
    with pytest.raises(ValidationError):
        model.model_validate({"instances": [{"f0": 80.5, "f1": 3, "f2": "Paris"}]})
