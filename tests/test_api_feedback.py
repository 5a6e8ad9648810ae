"""POST /feedback: the join with logged predictions, its outcomes and every bad input."""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import (
    DIABETES_ROW,
    IRIS_SETOSA,
    assert_error,
    predict,
    prediction_ids,
    stored_rows,
)

from app.artifacts import set_alias
from app.main import create_app
from app.settings import Settings
from app.training import train_demo


def feedback(client: TestClient, prediction_id: str, ground_truth: object) -> dict[str, object]:
    response = client.post(
        "/feedback", json={"prediction_id": prediction_id, "ground_truth": ground_truth}
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_feedback_right_after_prediction_is_joined(client: TestClient) -> None:
    """An id is usable as soon as the response is out, even before the log is written."""
    (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
    assert feedback(client, pid, "setosa") == {
        "prediction_id": pid,
        "status": "accepted",
        "model": "iris",
        "version": 1,
    }


def test_ground_truth_is_stored_with_the_prediction(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        right, wrong = prediction_ids(predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA))
        (reg,) = prediction_ids(predict(client, "diabetes", DIABETES_ROW))
        feedback(client, right, "setosa")
        feedback(client, wrong, "virginica")
        feedback(client, reg, 100.5)
        predicted = client.post("/predict/diabetes", json={"instances": [DIABETES_ROW]}).json()
    rows = {r["id"]: r for r in stored_rows(settings.data_dir)}
    assert (json.loads(rows[right]["ground_truth"]), rows[right]["correct"]) == ("setosa", 1)
    assert (json.loads(rows[wrong]["ground_truth"]), rows[wrong]["correct"]) == ("virginica", 0)
    value = predicted["predictions"][0]["prediction"]
    assert json.loads(rows[reg]["ground_truth"]) == 100.5
    assert rows[reg]["abs_error"] == pytest.approx(abs(value - 100.5))
    assert rows[reg]["correct"] is None
    assert all(rows[i]["feedback_at"] is not None for i in (right, wrong, reg))


def test_same_ground_truth_twice_is_accepted_once(client: TestClient) -> None:
    (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
    assert feedback(client, pid, "setosa")["status"] == "accepted"
    assert feedback(client, pid, "setosa")["status"] == "duplicate"


def test_different_ground_truth_is_409(client: TestClient) -> None:
    (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
    feedback(client, pid, "setosa")
    response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": "virginica"})
    error = assert_error(response, 409, "feedback_conflict")
    assert "setosa" in error["message"]


def test_unknown_id_is_404(client: TestClient) -> None:
    response = client.post("/feedback", json={"prediction_id": "f" * 32, "ground_truth": "setosa"})
    assert_error(response, 404, "unknown_prediction")


@pytest.mark.parametrize("label", ["dog", 1, 0.5, "Setosa"])
def test_label_not_among_the_classes_is_422(client: TestClient, label: object) -> None:
    (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
    response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": label})
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["field"] == "ground_truth"
    assert feedback(client, pid, "setosa")["status"] == "accepted"  # nothing was recorded


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_ground_truth_is_422(client: TestClient, literal: str) -> None:
    (pid,) = prediction_ids(predict(client, "diabetes", DIABETES_ROW))
    body = json.dumps({"prediction_id": pid, "ground_truth": "X"}).replace('"X"', literal)
    error = assert_error(client.post("/feedback", content=body), 422, "validation_error")
    assert {d["field"] for d in error["details"]} >= {"ground_truth.float"}
    assert feedback(client, pid, 10.0)["status"] == "accepted"


def test_text_ground_truth_for_a_regressor_is_422(client: TestClient) -> None:
    (pid,) = prediction_ids(predict(client, "diabetes", DIABETES_ROW))
    response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": "high"})
    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"{", 400, "invalid_json"),
        (b"[]", 422, "validation_error"),
        (b"{}", 422, "validation_error"),
        (b'{"prediction_id": "abc"}', 422, "validation_error"),
        (b'{"ground_truth": "setosa"}', 422, "validation_error"),
        (b'{"prediction_id": 5, "ground_truth": "setosa"}', 422, "validation_error"),
        (b'{"prediction_id": "", "ground_truth": "setosa"}', 422, "validation_error"),
        (b'{"prediction_id": "abc", "ground_truth": true}', 422, "validation_error"),
        (b'{"prediction_id": "abc", "ground_truth": null}', 422, "validation_error"),
        (b'{"prediction_id": "abc", "ground_truth": "x", "extra": 1}', 422, "validation_error"),
        (b'{"items": []}', 422, "validation_error"),
        (b'{"items": [{"prediction_id": "abc"}]}', 422, "validation_error"),
        (b'{"items": "abc"}', 422, "validation_error"),
    ],
)
def test_malformed_feedback(client: TestClient, body: bytes, status: int, code: str) -> None:
    assert_error(client.post("/feedback", content=body), status, code)


def test_missing_field_is_named_without_union_tags(client: TestClient) -> None:
    error = assert_error(
        client.post("/feedback", json={"prediction_id": "abc"}), 422, "validation_error"
    )
    assert [d["field"] for d in error["details"]] == ["ground_truth"]
    error = assert_error(
        client.post("/feedback", json={"items": [{"prediction_id": "abc"}]}),
        422,
        "validation_error",
    )
    assert [d["field"] for d in error["details"]] == ["items.0.ground_truth"]


def test_batch_reports_each_item_and_accepts_the_rest(client: TestClient) -> None:
    a, b, c = prediction_ids(predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA, IRIS_SETOSA))
    feedback(client, c, "setosa")
    items = [
        {"prediction_id": a, "ground_truth": "setosa"},
        {"prediction_id": "0" * 32, "ground_truth": "setosa"},
        {"prediction_id": b, "ground_truth": "dog"},
        {"prediction_id": c, "ground_truth": "setosa"},
        {"prediction_id": c, "ground_truth": "versicolor"},
    ]
    response = client.post("/feedback", json={"items": items})
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["duplicate"], body["failed"]) == (1, 1, 3)
    results = body["results"]
    assert [r["status"] for r in results] == ["accepted", "error", "error", "duplicate", "error"]
    assert [r["error"]["code"] for r in results if r["status"] == "error"] == [
        "unknown_prediction",
        "validation_error",
        "feedback_conflict",
    ]
    assert results[0]["model"] == "iris"
    # the failed item b is still open for a valid label
    assert feedback(client, b, "setosa")["status"] == "accepted"


def test_same_id_twice_in_a_batch_is_labelled_once(client: TestClient) -> None:
    (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
    items = [{"prediction_id": pid, "ground_truth": "setosa"}] * 2
    body = client.post("/feedback", json={"items": items}).json()
    assert [r["status"] for r in body["results"]] == ["accepted", "duplicate"]
    items = [
        {"prediction_id": pid, "ground_truth": "setosa"},
        {"prediction_id": pid, "ground_truth": "virginica"},
    ]
    body = client.post("/feedback", json={"items": items}).json()
    assert [r["status"] for r in body["results"]] == ["duplicate", "error"]


def test_batch_over_the_limit_is_422(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", max_feedback_items=2)
    with TestClient(create_app(settings)) as client:
        items = [{"prediction_id": "x", "ground_truth": "setosa"}] * 3
        error = assert_error(
            client.post("/feedback", json={"items": items}), 422, "validation_error"
        )
    assert error["details"][0]["field"] == "items"


def test_feedback_for_an_older_version_uses_that_versions_classes(
    settings: Settings,
) -> None:
    with TestClient(create_app(settings)) as client:
        (old,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
    train_demo(settings.models_dir)
    set_alias(settings.models_dir, "iris", "production", 2)
    with TestClient(create_app(settings)) as client:
        result = feedback(client, old, "setosa")
    assert (result["status"], result["version"]) == ("accepted", 1)
