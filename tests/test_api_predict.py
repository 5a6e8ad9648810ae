"""POST /predict/{model} and /predict: round trips, versions, and every bad input."""

import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import jsonschema_rs
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import (
    DIABETES_ROW,
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    assert_error,
    metric,
    predict,
    prediction_ids,
    stored_rows,
)
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from app.aliases import set_alias
from app.artifacts import load_estimator, read_metadata, sha256_bytes
from app.main import create_app
from app.registration import register_estimator
from app.schemas import PredictResponse
from app.settings import Settings
from app.training import train_demo

DATA = {  # real rows to predict, under the demo models' feature names
    "iris": load_iris(as_frame=True).data.set_axis(list(IRIS_SETOSA), axis=1),
    "diabetes": load_diabetes(as_frame=True).data.set_axis(list(DIABETES_ROW), axis=1),
}

UUID7_HEX = re.compile(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}")


def test_classifier_with_probabilities(client: TestClient) -> None:
    response = predict(client, "iris", IRIS_SETOSA, IRIS_VIRGINICA)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "iris"
    assert body["version"] == 1
    first, second = body["predictions"]
    assert first["prediction"] == "setosa"
    assert second["prediction"] == "virginica"
    assert set(first["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert sum(first["probabilities"].values()) == pytest.approx(1.0)
    assert max(first["probabilities"], key=first["probabilities"].get) == "setosa"


def test_classifier_without_probabilities(client: TestClient) -> None:
    features = client.get("/models/breast-cancer").json()["versions"][0]["features"]
    row = {f["name"]: f["min"] for f in features}
    prediction = predict(client, "breast-cancer", row).json()["predictions"][0]
    assert prediction["prediction"] in {"malignant", "benign"}
    assert "probabilities" not in prediction


def test_regressor(client: TestClient) -> None:
    prediction = predict(client, "diabetes", DIABETES_ROW).json()["predictions"][0]
    assert isinstance(prediction["prediction"], float)
    assert 25 < prediction["prediction"] < 350
    assert "probabilities" not in prediction


def documented_response(openapi: dict[str, Any], path: str) -> jsonschema_rs.Validator:
    """A validator of the 200 body that /openapi.json documents for ``POST path``."""
    response = openapi["paths"][path]["post"]["responses"]["200"]
    schema = response["content"]["application/json"]["schema"]
    return jsonschema_rs.validator_for({**schema, "components": openapi["components"]})


def test_responses_are_the_documented_predict_response(tmp_path: Path, models_dir: Path) -> None:
    """What the route encodes (orjson, from the predictor's typed result) is what the docs
    promise: PredictResponse itself, strictly, and the JSON Schema of /openapi.json."""
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", default_model="iris")
    with TestClient(create_app(settings)) as client:
        openapi = client.get("/openapi.json").json()
        features = client.get("/models/breast-cancer").json()["versions"][0]["features"]
        cases = [
            ("/predict/iris", "/predict/{model}", [IRIS_SETOSA, IRIS_VIRGINICA, IRIS_SETOSA]),
            ("/predict/diabetes", "/predict/{model}", [DIABETES_ROW, DIABETES_ROW]),
            (
                "/predict/breast-cancer",
                "/predict/{model}",
                [{f["name"]: f["min"] for f in features}],
            ),
            ("/predict", "/predict", [IRIS_VIRGINICA]),
        ]
        responses = {path: client.post(path, json={"instances": rows}) for path, _, rows in cases}
    for path, template, rows in cases:
        response = responses[path]
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["predictions"]) == len(rows)
        parsed = PredictResponse.model_validate_json(response.content, strict=True)
        assert parsed.model_dump(exclude_unset=True) == body  # nothing the model leaves out
        for documented in (path, template):
            documented_response(openapi, documented).validate(body)
    probabilities = {p: "probabilities" in r.json()["predictions"][0] for p, r in responses.items()}
    assert probabilities == {
        "/predict/iris": True,
        "/predict/diabetes": False,
        "/predict/breast-cancer": False,
        "/predict": True,
    }
    assert isinstance(responses["/predict/diabetes"].json()["predictions"][0]["prediction"], float)
    # The documented schema is not vacuous: a body of another shape fails it.
    validator = documented_response(openapi, "/predict/iris")
    assert not validator.is_valid({"model": "iris", "version": "1", "predictions": []})
    assert not validator.is_valid({"model": "iris", "version": 1, "predictions": [{"id": "a"}]})


def test_ids_are_unique_and_unguessable(client: TestClient) -> None:
    ids = prediction_ids(predict(client, "iris", *[IRIS_SETOSA] * 50))
    ids += prediction_ids(predict(client, "iris", IRIS_SETOSA))
    assert len(set(ids)) == 51
    # 32 lower-case hex digits, no dashes; version 7 (13th digit), RFC variant (17th: 8-b).
    assert all(UUID7_HEX.fullmatch(i) for i in ids), ids
    # UUIDv7: 74 random bits after a millisecond timestamp, so ids sort by time.
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert ids[-1][:12] >= ids[0][:12]


def test_every_row_is_logged(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        ids = prediction_ids(predict(client, "iris", IRIS_SETOSA, IRIS_VIRGINICA))
    rows = stored_rows(settings.data_dir)  # shutdown drained the log
    assert sorted(r["id"] for r in rows) == sorted(ids)
    by_id = {r["id"]: r for r in rows}
    setosa = by_id[ids[0]]
    assert (setosa["model"], setosa["version"]) == ("iris", 1)
    assert json.loads(setosa["inputs"]) == IRIS_SETOSA
    output = json.loads(setosa["output"])
    assert output["prediction"] == "setosa"
    assert set(output["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert setosa["ground_truth"] is None


def test_integer_values_are_accepted_for_float_features(client: TestClient) -> None:
    row = {name: int(value) for name, value in IRIS_VIRGINICA.items()}
    assert predict(client, "iris", row).status_code == 200


def test_body_without_json_content_type_is_parsed(client: TestClient) -> None:
    body = json.dumps({"instances": [IRIS_SETOSA]})
    response = client.post(
        "/predict/iris", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200


@pytest.fixture
def two_versions(settings: Settings) -> Iterator[TestClient]:
    """iris with versions 1 (production) and 2 (candidate)."""
    train_demo(settings.models_dir)  # version 2 of each demo; production stays 1
    set_alias(settings.models_dir, "iris", "candidate", 2)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_version_by_number_and_alias(two_versions: TestClient) -> None:
    client = two_versions
    body = {"instances": [IRIS_SETOSA]}
    assert client.post("/predict/iris", json=body).json()["version"] == 1
    assert client.post("/predict/iris?version=2", json=body).json()["version"] == 2
    assert client.post("/predict/iris?version=candidate", json=body).json()["version"] == 2
    assert client.post("/predict/iris?version=production", json=body).json()["version"] == 1
    assert client.post("/predict/iris?version=1", json=body).json()["version"] == 1


def test_version_registered_after_start_is_served(client: TestClient, settings: Settings) -> None:
    train_demo(settings.models_dir)
    response = client.post("/predict/iris?version=2", json={"instances": [IRIS_SETOSA]})
    assert response.status_code == 200
    assert response.json()["version"] == 2


def test_default_model_is_the_configured_one(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", default_model="iris")
    with TestClient(create_app(settings)) as client:
        response = client.post("/predict", json={"instances": [IRIS_SETOSA]})
    assert response.status_code == 200
    assert response.json()["model"] == "iris"


def test_default_model_is_the_only_one(tmp_path: Path) -> None:
    models = tmp_path / "models"
    train_demo(models)
    for other in ("breast-cancer", "diabetes"):
        for path in sorted((models / other).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (models / other).rmdir()
    with TestClient(create_app(Settings(models_dir=models, data_dir=tmp_path / "d"))) as client:
        response = client.post("/predict", json={"instances": [IRIS_SETOSA]})
    assert response.status_code == 200
    assert response.json()["model"] == "iris"


def test_default_model_ambiguous(client: TestClient) -> None:
    response = client.post("/predict", json={"instances": [IRIS_SETOSA]})
    error = assert_error(response, 404, "unknown_model")
    assert "STEWARD_DEFAULT_MODEL" in error["message"]


# --- bad input: each case a clear 4xx in the one error shape, and nothing logged ---------


def _field_errors(response_error: dict[str, object]) -> dict[str, str]:
    details = response_error["details"]
    assert isinstance(details, list)
    return {d["field"]: d["type"] for d in details}


@pytest.mark.parametrize(
    ("row", "field", "error_type"),
    [
        ({**IRIS_SETOSA, "sepal_length_cm": "5.1"}, "instances.0.sepal_length_cm", "float_type"),
        ({**IRIS_SETOSA, "sepal_length_cm": True}, "instances.0.sepal_length_cm", "float_type"),
        ({**IRIS_SETOSA, "sepal_length_cm": None}, "instances.0.sepal_length_cm", "float_type"),
        ({**IRIS_SETOSA, "sepal_length_cm": [1]}, "instances.0.sepal_length_cm", "float_type"),
        ({k: v for k, v in IRIS_SETOSA.items() if k != "petal_width_cm"},
         "instances.0.petal_width_cm", "missing"),
        ({**IRIS_SETOSA, "colour": "blue"}, "instances.0.colour", "extra_forbidden"),
    ],
)  # fmt: skip
def test_bad_field_is_422_naming_it(
    client: TestClient, row: dict[str, object], field: str, error_type: str
) -> None:
    error = assert_error(predict(client, "iris", IRIS_SETOSA, row), 422, "validation_error")
    assert _field_errors(error) == {field.replace(".0.", ".1."): error_type}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_number_is_422(client: TestClient, literal: str) -> None:
    row = {**IRIS_SETOSA, "sepal_length_cm": "X"}
    body = json.dumps({"instances": [row]}).replace('"X"', literal)
    error = assert_error(client.post("/predict/iris", content=body), 422, "validation_error")
    assert _field_errors(error) == {"instances.0.sepal_length_cm": "finite_number"}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"   ", 400, "invalid_json"),
        (b"{", 400, "invalid_json"),
        (b"{'instances': []}", 400, "invalid_json"),
        (b"not json", 400, "invalid_json"),
        (b"[]", 422, "validation_error"),
        (b'"instances"', 422, "validation_error"),
        (b"{}", 422, "validation_error"),
        (b'{"instances": []}', 422, "validation_error"),
        (b'{"instances": {}}', 422, "validation_error"),
        (b'{"instances": [1, 2]}', 422, "validation_error"),
        (b'{"instances": [{}], "extra": 1}', 422, "validation_error"),
    ],
)
def test_malformed_body(client: TestClient, body: bytes, status: int, code: str) -> None:
    assert_error(client.post("/predict/iris", content=body), status, code)


def test_empty_instances_names_the_field(client: TestClient) -> None:
    error = assert_error(
        client.post("/predict/iris", json={"instances": []}), 422, "validation_error"
    )
    assert _field_errors(error) == {"instances": "too_short"}


def test_more_instances_than_the_limit(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", max_instances=3)
    with TestClient(create_app(settings)) as client:
        assert predict(client, "iris", *[IRIS_SETOSA] * 3).status_code == 200
        error = assert_error(predict(client, "iris", *[IRIS_SETOSA] * 4), 422, "validation_error")
    assert _field_errors(error) == {"instances": "too_long"}


def test_body_over_the_size_limit_is_413(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", max_body_bytes=2048)
    big = json.dumps({"instances": [IRIS_SETOSA] * 40}).encode()
    assert len(big) > 2048
    with TestClient(create_app(settings)) as client:
        assert_error(client.post("/predict/iris", content=big), 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
            yield big[:1000]
            yield big[1000:]

        assert_error(client.post("/predict/iris", content=chunks()), 413, "payload_too_large")
        small = json.dumps({"instances": [IRIS_SETOSA]}).encode()
        assert (
            client.post("/predict/iris", content=iter([small[:10], small[10:]])).status_code == 200
        )
        assert_error(client.post("/feedback", content=big), 413, "payload_too_large")


def test_unknown_model_and_version(client: TestClient) -> None:
    assert_error(predict(client, "nope", IRIS_SETOSA), 404, "unknown_model")
    assert_error(
        client.post("/predict/iris?version=7", json={"instances": [IRIS_SETOSA]}),
        404,
        "unknown_version",
    )
    assert_error(
        client.post("/predict/iris?version=staging", json={"instances": [IRIS_SETOSA]}),
        404,
        "unknown_version",
    )
    assert_error(
        client.post(f"/predict/iris?version={'9' * 40}", json={"instances": [IRIS_SETOSA]}),
        422,
        "validation_error",
    )


@pytest.mark.parametrize("version", ["²", "٣", "1²", "-1", "1.0", " 1"])
def test_a_version_that_is_not_ascii_digits_is_not_a_version_number(
    client: TestClient, version: str
) -> None:
    """str.isdigit() says yes to "²" (and int() then fails) and to "٣" (an Arabic-Indic 3)."""
    response = client.post("/predict/iris", params={"version": version}, json={"instances": []})
    assert_error(response, 404, "unknown_version")


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/predict/iris"), 405, "method_not_allowed")


def test_bad_input_logs_nothing(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        good = prediction_ids(predict(client, "iris", IRIS_SETOSA))
        assert predict(client, "iris", {**IRIS_SETOSA, "sepal_length_cm": "x"}).status_code == 422
        assert client.post("/predict/iris", content=b"{").status_code == 400
        assert client.post("/predict/iris", content=b"").status_code == 400
        assert predict(client, "nope", IRIS_SETOSA).status_code == 404
    assert [r["id"] for r in stored_rows(settings.data_dir)] == good


def _register_log_model(tmp_path: Path, *, broken: bool = False) -> Settings:
    """A real pipeline, log(x) then a line, fitted on x in [1, 10]: log of a negative x is NaN.
    ``broken``: its coefficients are NaN, as a corrupted training run leaves them."""
    x = np.linspace(1, 10, 20).reshape(-1, 1)
    artifact = tmp_path / "log.joblib"
    pipeline = make_pipeline(FunctionTransformer(np.log), LinearRegression()).fit(x, x[:, 0])
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"x": x[:, 0]}).to_csv(sample, index=False)
    joblib.dump(pipeline, artifact)
    register_estimator(tmp_path / "models", artifact, "logger", sample)
    if broken:  # registered while it worked; the artifact is replaced with a broken twin
        pipeline[-1].coef_ = np.array([np.nan])
        version = tmp_path / "models" / "logger" / "1"
        joblib.dump(pipeline, version / "model.joblib")
        metadata = read_metadata(tmp_path / "models", "logger", 1)
        digest = sha256_bytes((version / "model.joblib").read_bytes())
        (version / "metadata.json").write_text(
            metadata.model_copy(update={"sha256": digest}).model_dump_json()
        )
    return Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data")


def test_input_the_model_cannot_score_is_422_naming_what_is_unusual(tmp_path: Path) -> None:
    settings = _register_log_model(tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/predict", json={"instances": [{"x": 2.0}]}).status_code == 200
        failed = client.post("/predict", json={"instances": [{"x": 2.0}, {"x": -1.0}]})
        error = assert_error(failed, 422, "unscorable_input")
        assert error["details"] == [
            {
                "field": "instances.1.x",
                "message": "outside the training range [1, 10]",
                "type": "outside_training_range",
            }
        ]
        assert "-1" not in error["message"]
        assert metric(client, "steward_errors_total", model="logger", stage="unscorable") == 1
        assert metric(client, "steward_errors_total", model="logger", stage="model") == 0
        assert metric(client, "steward_predictions_total", model="logger", version="1") == 1
        assert client.get("/readyz").status_code == 200
    assert len(stored_rows(settings.data_dir)) == 1


def test_a_broken_model_is_500_counted_and_not_logged(tmp_path: Path) -> None:
    settings = _register_log_model(tmp_path, broken=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        failed = client.post("/predict", json={"instances": [{"x": 2.0}]})
        error = assert_error(failed, 500, "model_failure")
        assert "logger v1" in error["message"]
        assert metric(client, "steward_errors_total", model="logger", stage="model") == 1
        assert metric(client, "steward_errors_total", model="logger", stage="unscorable") == 0
        assert metric(client, "steward_predictions_total", model="logger", version="1") == 0
    assert stored_rows(settings.data_dir) == []


# --- adaptive batching seen from outside: concurrent clients, each gets its own answer ----


def test_concurrent_requests_get_their_own_predictions(settings: Settings) -> None:
    """Clients at once on two models, valid and invalid bodies mixed in the same windows."""
    estimators = {
        name: load_estimator(settings.models_dir, read_metadata(settings.models_dir, name, 1))
        for name in DATA
    }
    names = {name: list(frame.columns) for name, frame in DATA.items()}

    def request(i: int) -> tuple[int, str, list[dict[str, Any]]]:
        name = ("iris", "diabetes")[i % 2]
        frame = DATA[name]
        rows: list[dict[str, Any]] = [
            dict(zip(names[name], map(float, frame.iloc[(i + k) % len(frame)]), strict=True))
            for k in range(1 + i % 3)
        ]
        if i % 5 == 0:  # every fifth request is invalid, in the middle of the others
            rows[-1] = {**rows[-1], names[name][0]: "not a number"}
        return i, name, rows

    requests = [request(i) for i in range(150)]
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: predict(client, r[1], *r[2]), requests))
        batched = {
            name: metric(client, "steward_model_batch_rows_sum", model=name, version="1")
            for name in DATA
        }
        predicted = {
            name: metric(client, "steward_predictions_total", model=name, version="1")
            for name in DATA
        }
    logged = {row["id"]: row for row in stored_rows(settings.data_dir)}
    expected_rows = 0
    for (i, name, rows), response in zip(requests, answers, strict=True):
        if i % 5 == 0:
            error = assert_error(response, 422, "validation_error")
            field = f"instances.{len(rows) - 1}.{names[name][0]}"
            assert _field_errors(error) == {field: "float_type"}
            continue
        body = response.json()
        assert (body["model"], len(body["predictions"])) == (name, len(rows))
        matrix = np.array([list(row.values()) for row in rows])
        for row, prediction, expected in zip(
            rows, body["predictions"], estimators[name].predict(matrix).tolist(), strict=True
        ):
            assert prediction["prediction"] == pytest.approx(expected)
            assert json.loads(logged[prediction["id"]]["inputs"]) == row
        expected_rows += len(rows)
    assert len(logged) == expected_rows
    assert batched == predicted  # every row went through exactly one model call
    assert sum(predicted.values()) == expected_rows
