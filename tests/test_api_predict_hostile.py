"""POST /predict under attack: finite extremes, huge integers, markup, long strings, odd bodies.

Each gets a 4xx in the one error shape that names the field and the rule without echoing what
was sent; the service stays ready and every metric stays finite.
"""

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import DIABETES_ROW, IRIS_SETOSA, assert_error, metric, predict
from httpx2 import Response
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings

BREAST_CANCER_FEATURE = "mean_radius"
EXTREMES = ["1e308", "-1.7976931348623157e308", str(2**70), str(10**400), "-" + str(2**63)]


def _row(client: TestClient, model: str) -> dict[str, float]:
    if model == "iris":
        return dict(IRIS_SETOSA)
    if model == "diabetes":
        return dict(DIABETES_ROW)
    features = client.get(f"/models/{model}").json()["versions"][0]["features"]
    return {f["name"]: (f["min"] + f["max"]) / 2 for f in features}


def _post_raw(client: TestClient, model: str, row: Mapping[str, object], literal: str) -> Response:
    """Post ``row`` with its "X" value replaced by a raw JSON literal (no float rounding)."""
    body = json.dumps({"instances": [row]}).replace('"X"', literal)
    return client.post(f"/predict/{model}", content=body)


def assert_healthy(client: TestClient) -> None:
    """Still ready, and no sample on /metrics is NaN or infinite."""
    assert client.get("/readyz").status_code == 200
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            assert math.isfinite(sample.value), sample


@pytest.mark.parametrize("model", ["iris", "breast-cancer", "diabetes"])
@pytest.mark.parametrize("literal", EXTREMES, ids=["1e308", "-max", "2^70", "10^400", "-2^63"])
def test_finite_extremes_are_refused_naming_the_feature(
    client: TestClient, model: str, literal: str
) -> None:
    row = _row(client, model)
    feature = next(iter(row))
    response = _post_raw(client, model, {**row, feature: "X"}, literal)
    error = assert_error(response, 422, "validation_error")
    (detail,) = error["details"]
    assert detail["field"] == f"instances.0.{feature}"
    assert detail["type"] in {"less_than_equal", "greater_than_equal", "finite_number"}
    assert literal.lstrip("-")[:6] not in json.dumps(error)
    assert_healthy(client)


@pytest.fixture
def unbounded(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    """The demo models with the range policy off: any finite value reaches the model."""
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", input_range_multiple=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("model", "literal"),
    [
        ("iris", "1e308"),  # the scaler overflows to infinity: scikit-learn raises
        ("iris", "5e307"),  # logistic scores overflow: NaN probabilities
        ("breast-cancer", "-1.7976931348623157e308"),
        ("diabetes", "1e308"),
        ("diabetes", "1e300"),  # a "prediction" of -4e301: far outside the training targets
    ],
)
def test_with_no_range_policy_what_the_model_cannot_score_is_422_never_500_or_null(
    unbounded: TestClient, model: str, literal: str
) -> None:
    row = dict.fromkeys(_row(unbounded, model), "X")  # every feature extreme
    response = _post_raw(unbounded, model, row, literal)
    error = assert_error(response, 422, "unscorable_input")
    assert {d["type"] for d in error["details"]} == {"outside_training_range"}
    assert len(error["details"]) == min(len(row), 20)  # the first 20 values named
    assert "outside the training range" in error["message"]
    assert literal[:6] not in json.dumps(error)
    assert metric(unbounded, "steward_errors_total", model=model, stage="unscorable") == 1
    assert metric(unbounded, "steward_errors_total", model=model, stage="model") == 0
    assert_healthy(unbounded)
    assert predict(unbounded, model, _row(unbounded, model)).status_code == 200


def test_unknown_model_and_version_are_not_echoed(client: TestClient) -> None:
    for name in ["<script>alert(1)<script>", "x" * 10_000, "iris%00", "IRIS"]:
        error = assert_error(predict(client, name, IRIS_SETOSA), 404, "unknown_model")
        assert "script" not in json.dumps(error)
        assert "xxxx" not in json.dumps(error)
    response = client.post("/predict/iris?version=<b>bold</b>", json={"instances": [IRIS_SETOSA]})
    assert "bold" not in json.dumps(assert_error(response, 404, "unknown_version"))
    assert_healthy(client)


def test_unexpected_keys_are_named_only_when_they_look_like_field_names(
    client: TestClient,
) -> None:
    markup = {**IRIS_SETOSA, "<img src=x onerror=alert(1)>": 1}
    error = assert_error(predict(client, "iris", markup), 422, "validation_error")
    assert error["details"] == [
        {
            "field": "instances.0.(unexpected key)",
            "message": "Extra inputs are not permitted",
            "type": "extra_forbidden",
        }
    ]
    long_key = {**IRIS_SETOSA, "k" * 100_000: 1}
    error = assert_error(predict(client, "iris", long_key), 422, "validation_error")
    assert len(json.dumps(error)) < 1000
    plain = {**IRIS_SETOSA, "colour": 1}
    error = assert_error(predict(client, "iris", plain), 422, "validation_error")
    assert error["details"][0]["field"] == "instances.0.colour"


@pytest.mark.parametrize(
    "value",
    ["x" * 100_000, None, [], {}, True, "1e3"],
    ids=["100kB-string", "null", "list", "object", "bool", "numeric-string"],
)
def test_wrong_kinds_of_value_are_refused_without_echo(client: TestClient, value: object) -> None:
    row = {**IRIS_SETOSA, "petal_width_cm": value}
    error = assert_error(predict(client, "iris", row), 422, "validation_error")
    assert error["details"][0]["field"] == "instances.0.petal_width_cm"
    assert len(json.dumps(error)) < 1000
    assert_healthy(client)


def test_a_key_twice_in_one_object_is_400_without_naming_it(client: TestClient) -> None:
    """Parsers disagree on which of two keys wins: a proxy may check one, the model use the
    other. Refused, wherever it is, whichever copy is valid, and the key is the client's, so it
    is not repeated."""
    row = json.dumps(IRIS_SETOSA)[1:-1]
    for body in [
        f'{{"instances": [{{{row}, "sepal_length_cm": 6.0}}]}}',
        f'{{"instances": [], "instances": [{{{row}}}]}}',
        f'{{"instances": [{{{row}}}], "instances": []}}',  # the copy that wins breaks the schema
        f'{{"instances": [{{{row}, "sepal_length_cm": "six"}}]}}',
    ]:
        error = assert_error(client.post("/predict/iris", content=body), 400, "invalid_json")
        assert error["message"].startswith("request body is not valid JSON: a key appears twice")
        assert "sepal" not in error["message"]
    dated = f'{{"instances": [{{{row}, "note": "10:30"}}]}}'  # colons in strings: still 422
    assert_error(client.post("/predict/iris", content=dated), 422, "validation_error")
    twice = '{"<x>\\n": 0, "<x>\\n": 1, "ground_truth": 1}'  # /feedback checks before validating
    error = assert_error(client.post("/feedback", content=twice), 400, "invalid_json")
    assert "<x>" not in error["message"]
    assert_healthy(client)


@pytest.mark.parametrize(
    "body",
    [
        b"\xef\xbb\xbf" + json.dumps({"instances": [IRIS_SETOSA]}).encode(),  # byte-order mark
        b'{"instances": [' + b"[" * 5000 + b"]" * 5000 + b"]}",  # deep nesting
        b'{"instances": ["\\ud800"]}',  # a lone surrogate
        b"\xff\xfe\x00\x00",  # not UTF-8
    ],
    ids=["bom", "deep-nesting", "lone-surrogate", "not-utf8"],
)
def test_odd_bodies_are_4xx(client: TestClient, body: bytes) -> None:
    response = client.post("/predict/iris", content=body)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error"}
    assert_healthy(client)
