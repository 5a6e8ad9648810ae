"""Metrics are honest: a scripted sequence, then the exact value of every counter it touched."""

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import (
    DIABETES_ROW,
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    metric,
    metric_sum,
    predict,
    prediction_ids,
)
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings

IRIS = {"model": "iris", "version": "1"}
DIABETES = {"model": "diabetes", "version": "1"}


def send(client: TestClient, pid: str, label: object) -> int:
    return client.post("/feedback", json={"prediction_id": pid, "ground_truth": label}).status_code


def test_scripted_classifier_sequence(client: TestClient) -> None:
    # 10 predictions, one row each: 5 predicted setosa, 5 predicted virginica.
    setosa = [prediction_ids(predict(client, "iris", IRIS_SETOSA))[0] for _ in range(5)]
    virginica = [prediction_ids(predict(client, "iris", IRIS_VIRGINICA))[0] for _ in range(5)]
    # Feedback: 6 correct, 2 wrong.
    for pid in setosa[:3]:
        assert send(client, pid, "setosa") == 200
    for pid in virginica[:3]:
        assert send(client, pid, "virginica") == 200
    assert send(client, setosa[3], "versicolor") == 200
    assert send(client, virginica[3], "setosa") == 200
    # Then: a duplicate, a conflict, an invalid label and an unknown id, none counted as labels.
    assert send(client, setosa[0], "setosa") == 200
    assert send(client, setosa[0], "virginica") == 409
    assert send(client, setosa[4], "dog") == 422
    assert send(client, "0" * 32, "setosa") == 404
    # And a request that fails validation and one for an unknown model.
    assert predict(client, "iris", {"sepal_length_cm": 1.0}).status_code == 422
    assert predict(client, "no-such-model", IRIS_SETOSA).status_code == 404

    assert metric(client, "steward_predictions_total", **IRIS) == 10
    assert metric(client, "steward_predicted_classes_total", **IRIS, **{"class": "setosa"}) == 5
    assert metric(client, "steward_predicted_classes_total", **IRIS, **{"class": "virginica"}) == 5
    assert metric(client, "steward_predicted_classes_total", **IRIS, **{"class": "versicolor"}) == 0
    assert metric(client, "steward_model_inference_duration_seconds_count", **IRIS) == 10
    assert metric(client, "steward_model_batch_rows_count", **IRIS) == 10  # one call a request
    assert metric(client, "steward_model_batch_rows_sum", **IRIS) == 10

    outcomes = {
        o: metric(client, "steward_feedback_total", **IRIS, outcome=o)
        for o in ("correct", "incorrect", "duplicate", "conflict", "invalid")
    }
    assert outcomes == {"correct": 6, "incorrect": 2, "duplicate": 1, "conflict": 1, "invalid": 1}

    def confusion(predicted: str, actual: str) -> float:
        correct = "true" if predicted == actual else "false"
        labels = {**IRIS, "predicted": predicted, "actual": actual, "correct": correct}
        return metric(client, "steward_feedback_confusion_total", **labels)

    assert confusion("setosa", "setosa") == 3
    assert confusion("virginica", "virginica") == 3
    assert confusion("setosa", "versicolor") == 1
    assert confusion("virginica", "setosa") == 1
    assert metric_sum(client, "steward_feedback_confusion_total", **IRIS) == 8

    # The PromQL of docs/metrics.md, evaluated on these counters:
    # accuracy = sum(correct) / sum(correct + incorrect)
    accuracy = outcomes["correct"] / (outcomes["correct"] + outcomes["incorrect"])
    assert accuracy == 0.75
    # precision(c) = sum by (predicted)(confusion{correct="true"}) / sum by (predicted)(confusion)
    # recall(c)    = sum by (actual)(confusion{correct="true"}) / sum by (actual)(confusion)
    name = "steward_feedback_confusion_total"
    for cls, precision, recall in [("setosa", 3 / 4, 3 / 4), ("virginica", 3 / 4, 3 / 3)]:
        right = metric_sum(client, name, predicted=cls, correct="true")
        assert right / metric_sum(client, name, predicted=cls) == precision
        assert metric_sum(client, name, actual=cls, correct="true") == right
        assert right / metric_sum(client, name, actual=cls) == recall
        # F1 = 2·TP / (predicted + actual), the docs' PromQL form
        both = metric_sum(client, name, predicted=cls) + metric_sum(client, name, actual=cls)
        assert 2 * right / both == pytest.approx(2 * precision * recall / (precision + recall))
    assert metric_sum(client, name, correct="true") / metric_sum(client, name) == accuracy

    assert metric(client, "steward_errors_total", model="iris", stage="validation") == 1
    assert metric(client, "steward_errors_total", model="_unknown", stage="unknown_model") == 1
    assert metric(client, "steward_errors_total", model="_unknown", stage="feedback") == 1
    assert metric(client, "steward_errors_total", model="iris", stage="model") == 0
    # "dog" is counted once, as the outcome "invalid" above, not as an error too.
    assert metric(client, "steward_errors_total", model="_unknown", stage="validation") == 0

    http = "steward_http_requests_total"
    route = {"method": "POST", "route": "/predict/{model}"}
    assert metric(client, http, **route, status="200") == 10
    assert metric(client, http, **route, status="422") == 1
    assert metric(client, http, **route, status="404") == 1
    feedback = {"method": "POST", "route": "/feedback"}
    assert metric(client, http, **feedback, status="200") == 9
    assert metric(client, http, **feedback, status="409") == 1
    assert metric(client, http, **feedback, status="422") == 1
    assert metric(client, http, **feedback, status="404") == 1
    assert (
        metric(
            client, "steward_http_request_duration_seconds_count", method="POST", route="/feedback"
        )
        == 12
    )


def test_feedback_errors_are_counted_once_where_they_are_answered(client: TestClient) -> None:
    """A body that is not JSON or does not fit counts as `validation`, an unknown id as
    `feedback` (alone or in a batch), a ground truth the model cannot have only as the outcome
    `invalid`; none of them under a model (the body names none that is known)."""
    pid, other = prediction_ids(predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA))
    assert client.post("/feedback", content=b"{").status_code == 400
    assert client.post("/feedback", json={"prediction_id": pid}).status_code == 422
    assert send(client, pid, "dog") == 422
    assert send(client, "0" * 32, "setosa") == 404
    items = [
        {"prediction_id": "1" * 32, "ground_truth": "setosa"},
        {"prediction_id": other, "ground_truth": "dog"},
        {"prediction_id": pid, "ground_truth": "setosa"},
    ]
    batch = client.post("/feedback", json={"items": items})
    assert (batch.json()["accepted"], batch.json()["failed"]) == (1, 2)

    def errors(model: str, stage: str) -> float:
        return metric(client, "steward_errors_total", model=model, stage=stage)

    assert errors("_unknown", "validation") == 2
    assert errors("_unknown", "feedback") == 2
    assert errors("iris", "validation") == 0
    assert metric_sum(client, "steward_errors_total", stage="store") == 0
    assert metric(client, "steward_feedback_total", **IRIS, outcome="invalid") == 2
    assert metric(client, "steward_feedback_total", **IRIS, outcome="correct") == 1


def test_scripted_regressor_sequence(client: TestClient) -> None:
    rows = [DIABETES_ROW, {**DIABETES_ROW, "bmi": -0.05}, {**DIABETES_ROW, "bmi": 0.1}]
    predicted = client.post("/predict/diabetes", json={"instances": rows}).json()["predictions"]
    truths = [150.0, 80, 300.5]
    for item, truth in zip(predicted, truths, strict=True):
        assert send(client, item["id"], truth) == 200
    errors = [abs(p["prediction"] - t) for p, t in zip(predicted, truths, strict=True)]

    assert metric(client, "steward_predictions_total", **DIABETES) == 3
    assert metric(client, "steward_model_inference_duration_seconds_count", **DIABETES) == 1
    assert metric(client, "steward_feedback_total", **DIABETES, outcome="labelled") == 3
    count = metric(client, "steward_feedback_absolute_error_count", **DIABETES)
    total = metric(client, "steward_feedback_absolute_error_sum", **DIABETES)
    squares = metric(client, "steward_feedback_squared_error_total", **DIABETES)
    assert count == 3
    assert total / count == pytest.approx(sum(errors) / 3)  # MAE
    assert math.sqrt(squares / count) == pytest.approx(math.sqrt(sum(e * e for e in errors) / 3))


def test_series_exist_from_startup(client: TestClient) -> None:
    assert metric(client, "steward_predictions_total", **IRIS) == 0
    assert metric(client, "steward_feedback_total", **IRIS, outcome="correct") == 0
    assert metric(client, "steward_feedback_total", **DIABETES, outcome="labelled") == 0
    assert (
        metric(
            client,
            "steward_feedback_confusion_total",
            **IRIS,
            predicted="setosa",
            actual="virginica",
            correct="false",
        )
        == 0
    )
    assert metric(client, "steward_feedback_squared_error_total", **DIABETES) == 0
    assert metric(client, "steward_errors_total", model="iris", stage="validation") == 0
    assert metric(client, "steward_model_info", **IRIS, alias="production") == 1
    assert metric(client, "steward_model_sklearn_version_mismatch", **IRIS) == 0
    assert metric(client, "steward_prediction_log_pending_rows") == 0


def test_shadow_series_exist_from_startup_for_each_task(client: TestClient) -> None:
    """Each loaded version's shadow-pair series at 0, for both roles: its task's outcomes only
    (a champion is never invalid: it is counted only beside a challenger that was scored)."""
    shadow = "steward_shadow_feedback_total"
    assert metric_sum(client, shadow) == 0
    outcomes = {
        (sample.labels["model"], sample.labels["role"], sample.labels["outcome"])
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == shadow and sample.labels["model"] in ("iris", "diabetes")
    }
    assert outcomes == {
        ("iris", "challenger", "correct"),
        ("iris", "challenger", "incorrect"),
        ("iris", "champion", "correct"),
        ("iris", "champion", "incorrect"),
        ("diabetes", "challenger", "labelled"),
        ("diabetes", "challenger", "invalid"),
        ("diabetes", "champion", "labelled"),
    }
    for role in ("challenger", "champion"):
        for name in ("absolute_error", "squared_error"):
            total = f"steward_shadow_feedback_{name}_total"
            assert metric(client, total, **DIABETES, role=role) == 0


def test_labels_are_bounded(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        predict(client, f"random-{name}", IRIS_SETOSA)
    client.get("/some/raw/path/123")
    client.post("/feedback", json={"prediction_id": "secret-id-123", "ground_truth": "x"})
    text = client.get("/metrics").text
    assert "random-" not in text
    assert "/some/raw" not in text
    assert "secret-id" not in text
    routes = {
        sample.labels["route"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "route" in sample.labels
    }
    assert routes == {"/predict/{model}", "/feedback", "_unmatched"}


def test_requests_answered_before_routing_or_by_a_mount_get_their_route(
    client: TestClient,
) -> None:
    """A 413 is answered before routing, docs assets by a mount: each is labelled with the
    template of the route it matches; only a path that matches none is ``_unmatched``."""
    too_big = client.post("/predict/iris", content=b"x" * 2_000_000)
    assert too_big.status_code == 413
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    counts = {
        (labels["method"], labels["route"], labels["status"]): value
        for labels, value in (
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
            if sample.name == "steward_http_requests_total"
        )
    }
    assert counts == {
        ("POST", "/predict/{model}", "413"): 1,
        ("GET", "/docs/assets", "200"): 1,
        ("GET", "_unmatched", "404"): 1,
    }


def test_scrapes_and_probes_are_not_counted(client: TestClient) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        client.get(path)
    assert "steward_http_requests_total{" not in client.get("/metrics").text


def test_class_labels_are_capped(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", max_class_labels=2)
    with TestClient(create_app(settings)) as client:
        (pid,) = prediction_ids(predict(client, "iris", IRIS_VIRGINICA))
        assert send(client, pid, "virginica") == 200
        assert metric(client, "steward_predicted_classes_total", **IRIS, **{"class": "_other"}) == 1
        other = {"predicted": "_other", "actual": "_other"}
        name = "steward_feedback_confusion_total"
        assert metric(client, name, **IRIS, **other, correct="true") == 1
        assert metric(client, name, **IRIS, **other, correct="false") == 0
        text = client.get("/metrics").text
    assert 'class="virginica"' not in text
    assert 'predicted="virginica"' not in text
