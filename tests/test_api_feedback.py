"""POST /feedback: the join with logged predictions, its outcomes and every bad input."""

import json
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import (
    DIABETES_ROW,
    IRIS_SETOSA,
    assert_error,
    metric,
    predict,
    prediction_ids,
    stored_rows,
)
from sklearn.tree import DecisionTreeClassifier

from app.aliases import set_alias
from app.artifacts import load_estimator, read_metadata, save_version
from app.ids import new_ids
from app.main import create_app
from app.settings import Settings
from app.store import PredictionRecord, open_store
from app.training import train_demo

DIABETES = {"model": "diabetes", "version": "1"}


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


def test_different_ground_truth_is_409_and_does_not_reveal_the_recorded_one(
    client: TestClient,
) -> None:
    (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
    feedback(client, pid, "versicolor")
    response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": "virginica"})
    error = assert_error(response, 409, "feedback_conflict")
    assert error["message"] == "a different ground truth is already recorded for this prediction"
    assert error["details"] == [
        {"field": "ground_truth", "message": error["message"], "type": "conflict"}
    ]
    assert "versicolor" not in response.text
    assert "virginica" not in response.text
    assert pid not in response.text


def test_unknown_id_is_404_without_echo(client: TestClient) -> None:
    unknown = "f" * 32
    response = client.post("/feedback", json={"prediction_id": unknown, "ground_truth": "setosa"})
    error = assert_error(response, 404, "unknown_prediction")
    assert [d["field"] for d in error["details"]] == ["prediction_id"]
    assert unknown not in response.text


@pytest.mark.parametrize("label", ["dog", 1, 0.5, "Setosa", "x" * 100_000])
def test_label_not_among_the_classes_is_422_without_echo(client: TestClient, label: object) -> None:
    (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
    response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": label})
    error = assert_error(response, 422, "validation_error")
    assert error["message"] == (
        "ground_truth must be one of the model's 3 classes: 'setosa', 'versicolor', 'virginica'"
    )
    assert error["details"] == [
        {"field": "ground_truth", "message": error["message"], "type": "not_a_class"}
    ]
    assert repr(label) not in response.text
    assert feedback(client, pid, "setosa")["status"] == "accepted"  # nothing was recorded
    assert client.get("/readyz").status_code == 200


def test_class_list_is_cut_to_a_few_examples_and_a_count(settings: Settings) -> None:
    """A classifier with many classes is named by three of them and how many there are."""
    metadata = read_metadata(settings.models_dir, "iris", 1)
    rng = np.random.default_rng(8)
    labels = [f"class-{i:02d}" for i in range(40)] * 3
    estimator = DecisionTreeClassifier(random_state=0).fit(rng.random((120, 4)), labels)
    classes = estimator.classes_.tolist()
    save_version(settings.models_dir, metadata.model_copy(update={"classes": classes}), estimator)
    with TestClient(create_app(settings)) as client:
        response = client.post("/predict/iris?version=2", json={"instances": [IRIS_SETOSA]})
        (pid,) = prediction_ids(response)
        response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": "dog"})
        error = assert_error(response, 422, "validation_error")
        assert feedback(client, pid, "class-39")["status"] == "accepted"
    assert error["message"] == (
        "ground_truth must be one of the model's 40 classes, e.g. 'class-00', 'class-01', "
        "'class-02'"
    )
    assert "class-03" not in response.text
    assert "dog" not in response.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_ground_truth_is_422(client: TestClient, literal: str) -> None:
    (pid,) = prediction_ids(predict(client, "diabetes", DIABETES_ROW))
    body = json.dumps({"prediction_id": pid, "ground_truth": "X"}).replace('"X"', literal)
    error = assert_error(client.post("/feedback", content=body), 422, "validation_error")
    assert error["details"] == [
        {
            "field": "ground_truth",
            "message": "Input should be a string or a finite number",
            "type": "ground_truth_type",
        }
    ]
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
        client.post("/feedback", json={"prediction_id": "0" * 32}), 422, "validation_error"
    )
    assert [d["field"] for d in error["details"]] == ["ground_truth"]
    error = assert_error(
        client.post("/feedback", json={"items": [{"prediction_id": "0" * 32}]}),
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
        items = [{"prediction_id": "0" * 32, "ground_truth": "setosa"}] * 3
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


# --- regressor ground truth is bounded --------------------------------------------------------


def post_raw(client: TestClient, prediction_id: str, literal: str) -> Any:
    """Feedback whose ground truth is a raw JSON literal (no Python value could encode some)."""
    body = json.dumps({"prediction_id": prediction_id, "ground_truth": "X"})
    return client.post("/feedback", content=body.replace('"X"', literal))


def diabetes_range(client: TestClient, version: int = 1) -> tuple[float, float]:
    """The served version's training target range, as GET /models/{model} reports it."""
    versions = client.get("/models/diabetes").json()["versions"]
    (metadata,) = [v for v in versions if v["version"] == version]
    return metadata["target_min"], metadata["target_max"]


HOSTILE_NUMBERS = [
    "1e308",
    "-1.7976931348623157e308",
    "1.7976931348623157e308",
    "1e35",
    "-1e35",
    str(2**70),
    str(-(2**70)),
    str(10**400),
    "true",
    "false",
]


@pytest.mark.parametrize("literal", HOSTILE_NUMBERS)
def test_hostile_regressor_ground_truth_is_422(client: TestClient, literal: str) -> None:
    (pid,) = prediction_ids(predict(client, "diabetes", DIABETES_ROW))
    response = post_raw(client, pid, literal)
    error = assert_error(response, 422, "validation_error")
    assert error["details"]
    assert all(d["field"].startswith("ground_truth") for d in error["details"])
    assert literal not in response.text
    assert metric(client, "steward_feedback_squared_error_total", **DIABETES) == 0
    assert metric(client, "steward_feedback_absolute_error_count", **DIABETES) == 0
    assert client.get("/readyz").status_code == 200
    assert feedback(client, pid, 150.0)["status"] == "accepted"  # nothing was recorded


def test_integer_too_long_to_parse_is_400_without_echo(client: TestClient) -> None:
    (pid,) = prediction_ids(predict(client, "diabetes", DIABETES_ROW))
    response = post_raw(client, pid, "1" + "0" * 5000)
    assert_error(response, 400, "invalid_json")
    assert "0" * 20 not in response.text
    assert client.get("/readyz").status_code == 200
    assert feedback(client, pid, 150.0)["status"] == "accepted"


def test_out_of_range_message_names_the_rule_not_the_value(client: TestClient) -> None:
    low, high = diabetes_range(client)
    span = high - low
    (pid,) = prediction_ids(predict(client, "diabetes", DIABETES_ROW))
    error = assert_error(post_raw(client, pid, "1e35"), 422, "validation_error")
    rule = (
        f"ground_truth must be within [{low - 10 * span:g}, {high + 10 * span:g}]: the model's "
        "training target range widened by 10 spans on each side"
    )
    assert error["message"] == rule
    assert error["details"] == [{"field": "ground_truth", "message": rule, "type": "out_of_range"}]


def test_squared_error_stays_exact_and_finite_through_refused_ground_truths(
    client: TestClient,
) -> None:
    rows = [DIABETES_ROW, {**DIABETES_ROW, "bmi": -0.05}, {**DIABETES_ROW, "bmi": 0.1}]
    predictions = predict(client, "diabetes", *rows).json()["predictions"]
    ids = [p["id"] for p in predictions]
    script: list[tuple[int, object, int]] = [
        (0, 1e308, 422),
        (0, 150.0, 200),
        (1, 2**70, 422),
        (1, -1.7976931348623157e308, 422),
        (1, 80, 200),
        (2, 10**400, 422),
        (2, 1e35, 422),
        (2, 300.5, 200),
        (0, 1e308, 422),  # after a label too: refused before the duplicate/conflict check
    ]
    for row, truth, status in script:
        response = client.post("/feedback", json={"prediction_id": ids[row], "ground_truth": truth})
        assert response.status_code == status, (row, response.text)
    errors = [
        abs(predictions[row]["prediction"] - float(truth))  # type: ignore[arg-type]
        for row, truth, status in script
        if status == 200
    ]
    squares = metric(client, "steward_feedback_squared_error_total", **DIABETES)
    assert math.isfinite(squares)
    assert squares == sum(e * e for e in errors)
    assert metric(client, "steward_feedback_absolute_error_sum", **DIABETES) == sum(errors)
    assert metric(client, "steward_feedback_absolute_error_count", **DIABETES) == 3
    assert metric(client, "steward_feedback_total", **DIABETES, outcome="labelled") == 3
    assert metric(client, "steward_feedback_total", **DIABETES, outcome="invalid") == 6
    assert client.get("/readyz").status_code == 200


def test_ground_truth_at_the_edges_of_the_range_is_accepted(client: TestClient) -> None:
    target_min, target_max = diabetes_range(client)
    span = target_max - target_min
    low, high = target_min - 10 * span, target_max + 10 * span
    a, b, c, d = prediction_ids(predict(client, "diabetes", *[DIABETES_ROW] * 4))
    assert feedback(client, a, high)["status"] == "accepted"
    assert feedback(client, b, low)["status"] == "accepted"
    for pid, beyond in ((c, math.nextafter(high, math.inf)), (d, math.nextafter(low, -math.inf))):
        response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": beyond})
        assert_error(response, 422, "validation_error")


def test_target_range_multiple_sets_the_range(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", target_range_multiple=1)
    with TestClient(create_app(settings)) as client:
        target_min, target_max = diabetes_range(client)
        high = 2 * target_max - target_min
        a, b = prediction_ids(predict(client, "diabetes", DIABETES_ROW, DIABETES_ROW))
        assert feedback(client, a, high)["status"] == "accepted"
        response = client.post("/feedback", json={"prediction_id": b, "ground_truth": high + 1})
        assert_error(response, 422, "validation_error")


def test_no_range_check_still_has_the_hard_bound(tmp_path: Path, models_dir: Path) -> None:
    """target_range_multiple=0: any number within ±1e100 is taken, and counters stay finite."""
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", target_range_multiple=0)
    with TestClient(create_app(settings)) as client:
        predictions = predict(client, "diabetes", *[DIABETES_ROW] * 3).json()["predictions"]
        a, b, c = (p["id"] for p in predictions)
        assert feedback(client, a, 1e35)["status"] == "accepted"
        assert feedback(client, b, -1e100)["status"] == "accepted"
        for literal in ("1.0000000000000002e100", "1e308", str(2**400)):
            error = assert_error(post_raw(client, c, literal), 422, "validation_error")
            assert error["message"] == "ground_truth must be a number within ±1e+100"
        squares = metric(client, "steward_feedback_squared_error_total", **DIABETES)
        predicted = predictions[0]["prediction"]
        assert squares == (predicted - 1e35) ** 2 + (predicted + 1e100) ** 2
        assert math.isfinite(squares)


def save_diabetes_copy(models_dir: Path, **update: float | None) -> int:
    """Diabetes v1's estimator saved again as a new version whose metadata differs by ``update``."""
    metadata = read_metadata(models_dir, "diabetes", 1)
    estimator = load_estimator(models_dir, metadata)
    return save_version(models_dir, metadata.model_copy(update=update), estimator).version


def test_version_without_a_target_range_gets_the_hard_bound(settings: Settings) -> None:
    """Older metadata and registered models know no target range: only ±1e100 applies."""
    version = save_diabetes_copy(settings.models_dir, target_min=None, target_max=None)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            f"/predict/diabetes?version={version}", json={"instances": [DIABETES_ROW] * 3}
        )
        a, b, c = prediction_ids(response)
        assert feedback(client, a, 1e35)["status"] == "accepted"
        assert feedback(client, b, 1e100)["status"] == "accepted"
        error = assert_error(post_raw(client, c, "1e308"), 422, "validation_error")
        assert error["message"] == "ground_truth must be a number within ±1e+100"
        labels = {"model": "diabetes", "version": str(version)}
        assert math.isfinite(metric(client, "steward_feedback_squared_error_total", **labels))
        assert client.get("/readyz").status_code == 200


def test_zero_span_target_range_falls_back_to_the_targets_magnitude(settings: Settings) -> None:
    """All training targets equal 150: the span counts as 150, so [150 - 1500, 150 + 1500] is
    accepted (the copy's predictions, near 150, are inside it: a version whose typical
    prediction is far outside its own target range is broken)."""
    version = save_diabetes_copy(settings.models_dir, target_min=150.0, target_max=150.0)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            f"/predict/diabetes?version={version}", json={"instances": [DIABETES_ROW] * 3}
        )
        a, b, c = prediction_ids(response)
        assert feedback(client, a, 1650.0)["status"] == "accepted"
        assert feedback(client, b, -1350)["status"] == "accepted"
        error = assert_error(post_raw(client, c, "1650.5"), 422, "validation_error")
        assert error["message"].startswith("ground_truth must be within [-1350, 1650]")


def test_a_logged_prediction_too_far_out_to_score_is_refused(settings: Settings) -> None:
    """An absurd prediction logged earlier (an older build served them) is never scored."""
    (pid,) = new_ids(1)
    store = open_store(settings.store_url)
    names, values = tuple(DIABETES_ROW), tuple(DIABETES_ROW.values())
    record = PredictionRecord(pid, "diabetes", 1, datetime.now(UTC), names, values, -4.18e301)
    store.write_predictions([record])
    store.close()
    with TestClient(create_app(settings)) as client:
        response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": 150.0})
        error = assert_error(response, 422, "validation_error")
        assert [d["field"] for d in error["details"]] == ["prediction_id"]
        assert "4.18" not in response.text
        assert metric(client, "steward_feedback_squared_error_total", **DIABETES) == 0
        assert metric(client, "steward_feedback_total", **DIABETES, outcome="invalid") == 1
        assert client.get("/readyz").status_code == 200
    (row,) = stored_rows(settings.data_dir)
    assert row["ground_truth"] is None


def test_batch_with_hostile_regressor_ground_truth(client: TestClient) -> None:
    a, b, c = prediction_ids(predict(client, "diabetes", *[DIABETES_ROW] * 3))
    items = [
        {"prediction_id": a, "ground_truth": 1e308},
        {"prediction_id": b, "ground_truth": 150.0},
        {"prediction_id": c, "ground_truth": 10**400},
    ]
    response = client.post("/feedback", json={"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["duplicate"], body["failed"]) == (1, 0, 2)
    assert [r["status"] for r in body["results"]] == ["error", "accepted", "error"]
    assert str(10**400) not in response.text
    assert "1e+308" not in response.text
    assert math.isfinite(metric(client, "steward_feedback_squared_error_total", **DIABETES))
    assert client.get("/readyz").status_code == 200


# --- feedback ids -----------------------------------------------------------------------------


def test_dashed_and_upper_case_ids_are_one_prediction(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
        dashed = str(uuid.UUID(pid))
        assert len(dashed) == 36
        first = feedback(client, dashed, "setosa")
        assert (first["status"], first["prediction_id"]) == ("accepted", pid)
        for form in (pid.upper(), dashed.upper(), pid):
            again = feedback(client, form, "setosa")
            assert (again["status"], again["prediction_id"]) == ("duplicate", pid)
        response = client.post(
            "/feedback", json={"prediction_id": dashed.upper(), "ground_truth": "virginica"}
        )
        assert_error(response, 409, "feedback_conflict")
        iris = {"model": "iris", "version": "1"}
        assert metric(client, "steward_feedback_total", **iris, outcome="correct") == 1
        assert metric(client, "steward_feedback_total", **iris, outcome="duplicate") == 3
    (row,) = stored_rows(settings.data_dir)
    assert (row["id"], json.loads(row["ground_truth"])) == (pid, "setosa")


def test_batch_with_several_forms_of_one_id_labels_it_once(client: TestClient) -> None:
    (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
    dashed = str(uuid.UUID(pid)).upper()
    items = [
        {"prediction_id": dashed, "ground_truth": "setosa"},
        {"prediction_id": pid.upper(), "ground_truth": "setosa"},
        {"prediction_id": pid, "ground_truth": "virginica"},
    ]
    body = client.post("/feedback", json={"items": items}).json()
    assert [r["status"] for r in body["results"]] == ["accepted", "duplicate", "error"]
    assert [r["prediction_id"] for r in body["results"]] == [pid, pid, pid]
    assert body["results"][2]["error"]["code"] == "feedback_conflict"


MALFORMED_IDS = [
    "0123abc",  # too short
    "g" * 32,  # not hex
    "0" * 31 + "\n",  # a trailing newline
    "0" * 33,  # too long
    "{" + str(uuid.UUID(int=7)) + "}",  # braces: not a form Steward hands out
    "urn:uuid:" + str(uuid.UUID(int=7)),
    "0000000-00000-0000-0000-000000000007",  # dashes in the wrong places
    "\uff10" * 32,  # full-width digit zero
    "q" * 100_000,
]


@pytest.mark.parametrize("bad", MALFORMED_IDS, ids=lambda bad: f"{bad[:12]!r}+{len(bad)}")
def test_malformed_id_is_422_without_echo(client: TestClient, bad: str) -> None:
    response = client.post("/feedback", json={"prediction_id": bad, "ground_truth": "setosa"})
    error = assert_error(response, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["prediction_id"]
    assert bad not in response.text
    assert json.dumps(bad)[1:-1] not in response.text
    response = client.post("/feedback", json={"items": [{"prediction_id": bad, "ground_truth": 1}]})
    error = assert_error(response, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["items.0.prediction_id"]
    assert json.dumps(bad)[1:-1] not in response.text
    assert client.get("/readyz").status_code == 200


def test_long_ground_truth_is_422_without_echo(client: TestClient) -> None:
    (pid,) = prediction_ids(predict(client, "diabetes", DIABETES_ROW))
    long = "7" * 100_000
    response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": long})
    error = assert_error(response, 422, "validation_error")
    assert error["message"] == "ground_truth must be a number for a regressor"
    assert "7" * 20 not in response.text
    items = [{"prediction_id": pid, "ground_truth": long}]
    response = client.post("/feedback", json={"items": items})
    (result,) = response.json()["results"]
    assert (result["status"], result["error"]["code"]) == ("error", "validation_error")
    assert "7" * 20 not in response.text
    assert feedback(client, pid, 150.0)["status"] == "accepted"
    assert client.get("/readyz").status_code == 200
