"""GET /models and /models/{model}, and how a run-time swap shows on them and elsewhere."""

import json
import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from helpers import DIABETES_ROW, IRIS_SETOSA, assert_error, metric, predict, prediction_ids

from app.aliases import set_alias
from app.artifacts import METADATA
from app.main import create_app
from app.services import Services
from app.settings import Settings
from app.store import Label, PredictionRecord
from app.training import train_demo


def test_list_models(client: TestClient) -> None:
    models = client.get("/models").json()
    assert [m["name"] for m in models] == ["breast-cancer", "diabetes", "iris"]
    iris = models[2]
    assert iris == {
        "name": "iris",
        "task": "classification",
        "versions": [1],
        "aliases": {"production": 1},
        "serving": 1,
        "refused": None,
        "traffic": "none",
    }


def test_model_detail(client: TestClient) -> None:
    body = client.get("/models/iris").json()
    assert body["aliases"] == {"production": 1}
    assert body["loaded"] == [
        {
            "version": 1,
            "aliases": ["production"],
            "sklearn_mismatch": None,
            "runtime": "onnxruntime",
            "fallback": None,
        }
    ]
    assert body["refusals"] == []
    assert body["traffic"] == {
        "mode": "none",
        "percent": 0.0,
        "candidate": None,
        "at": None,
        "by": None,
        "active": False,
        "inactive_reason": None,
    }
    (version,) = body["versions"]
    assert version["classes"] == ["setosa", "versicolor", "virginica"]
    assert len(version["sha256"]) == 64
    assert set(version["reference_profile"]) == {f["name"] for f in version["features"]}
    data = version["training_data"]
    assert data["sources"] == [
        {"kind": "demo", "name": "iris", "rows": 150, "sha256": data["sources"][0]["sha256"]}
    ]
    assert (data["rows"], data["training_rows"], data["held_out_rows"]) == (150, 112, 38)
    assert (data["copy_file"], data["split"]["stratified"]) == (None, True)


def test_unknown_model_is_404(client: TestClient) -> None:
    assert_error(client.get("/models/nope"), 404, "unknown_model")
    assert metric(client, "steward_errors_total", model="_unknown", stage="unknown_model") == 1


def test_sklearn_mismatch_is_shown(settings: Settings) -> None:
    path = settings.models_dir / "iris" / "1" / METADATA
    metadata = json.loads(path.read_text())
    metadata["sklearn_version"] = "1.0.2"
    path.write_text(json.dumps(metadata))
    with TestClient(create_app(settings)) as client:
        (loaded,) = client.get("/models/iris").json()["loaded"]
        text = client.get("/metrics").text
    assert "saved with scikit-learn 1.0.2" in loaded["sklearn_mismatch"]
    assert 'steward_model_sklearn_version_mismatch{model="iris",version="1"} 1.0' in text


def test_a_swap_at_run_time_reaches_predict_models_readyz_and_metrics(settings: Settings) -> None:
    """The registry's hooks carry a swap everywhere, with nothing polling: the next /predict
    is served by the new version, /models and /readyz name it, steward_model_info moves; after
    the old version is unloaded its series and its batcher lane are gone."""
    train_demo(settings.models_dir)  # version 2 of each demo; production stays 1
    with TestClient(create_app(settings)) as client:
        services: Services = client.app_state["services"]
        registry, predictor, metrics = services.registry, services.predictor, services.metrics

        def info(version: str, alias: str) -> float | None:
            labels = {"model": "iris", "version": version, "alias": alias}
            return metrics.registry.get_sample_value("steward_model_info", labels)

        assert predict(client, "iris", IRIS_SETOSA).json()["version"] == 1
        old = registry.resolve("iris")
        assert old in predictor.batcher.keys
        assert (info("1", "production"), info("2", "production")) == (1, None)

        registry.point("iris", "production", 2)  # from another thread than the loop's
        assert (info("1", "production"), info("1", ""), info("2", "production")) == (None, 1, 1)
        assert info("2", "") is None
        assert predict(client, "iris", IRIS_SETOSA).json()["version"] == 2
        iris = {m["name"]: m for m in client.get("/models").json()}["iris"]
        assert (iris["serving"], iris["aliases"]) == (2, {"production": 2})
        assert client.get("/readyz").json()["models"] == {
            "breast-cancer": 1,
            "diabetes": 1,
            "iris": 2,
        }

        registry.unload("iris", 1)
        assert info("1", "") is None
        mismatch = {"model": "iris", "version": "1"}
        assert (
            metrics.registry.get_sample_value("steward_model_sklearn_version_mismatch", mismatch)
            is None
        )
        # The lane closes on the event loop; this request runs there after it.
        assert client.get("/models/iris").json()["loaded"] == [
            {
                "version": 2,
                "aliases": ["production"],
                "sklearn_mismatch": None,
                "runtime": "onnxruntime",
                "fallback": None,
            }
        ]
        assert [(m.name, m.version) for m in predictor.batcher.keys if m.name == "iris"] == [
            ("iris", 2)
        ]
        assert predict(client, "iris", IRIS_SETOSA).json()["version"] == 2


# --- live quality per version (champion vs challenger) ------------------------------------


def label_each(client: TestClient, ids: list[str], truths: list[object]) -> None:
    for prediction_id, truth in zip(ids, truths, strict=True):
        body = {"prediction_id": prediction_id, "ground_truth": truth}
        assert client.post("/feedback", json=body).status_code == 200


def quality(client: TestClient, model: str) -> dict[int, dict[str, object]]:
    """GET /models/{model}'s quality of the rows each version served, by version, after the log
    has written every prediction (no shadow rows here: tests/test_shadow_feedback.py)."""
    services: Services = client.app_state["services"]
    services.log.flush()
    response = client.get(f"/models/{model}")
    assert response.status_code == 200, response.text
    json.loads(response.text, parse_constant=_refuse_constant)  # strict JSON: no NaN, Infinity
    body = response.json()
    assert body["paired"] == []
    assert {q.pop("role") for q in body["quality"]} <= {"served"}
    return {q.pop("version"): q for q in body["quality"]}


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"{name} in a JSON response")


def test_champion_and_challenger_scored_side_by_side(settings: Settings) -> None:
    train_demo(settings.models_dir)  # version 2 of each demo
    set_alias(settings.models_dir, "iris", "candidate", 2)
    with TestClient(create_app(settings)) as client:
        assert quality(client, "iris") == {
            1: {"predictions": 0, "labelled": 0, "accuracy": None, "mae": None, "rmse": None},
            2: {"predictions": 0, "labelled": 0, "accuracy": None, "mae": None, "rmse": None},
        }
        champion = client.post("/predict/iris", json={"instances": [IRIS_SETOSA] * 3})
        challenger = client.post(
            "/predict/iris?version=candidate", json={"instances": [IRIS_SETOSA] * 3}
        )
        for response, version in ((champion, 1), (challenger, 2)):
            assert response.json()["version"] == version
            assert {p["prediction"] for p in response.json()["predictions"]} == {"setosa"}
        label_each(client, prediction_ids(champion), ["setosa", "setosa", "virginica"])
        label_each(client, prediction_ids(challenger)[:2], ["setosa", "versicolor"])
        body = client.get("/models/iris").json()
        assert body["aliases"] == {"candidate": 2, "production": 1}
        assert body["quality_window_seconds"] == 7 * 86400
        assert quality(client, "iris") == {
            1: {"predictions": 3, "labelled": 3, "accuracy": 2 / 3, "mae": None, "rmse": None},
            2: {"predictions": 3, "labelled": 2, "accuracy": 0.5, "mae": None, "rmse": None},
        }


def test_regressor_quality_is_mae_and_rmse(client: TestClient) -> None:
    response = predict(client, "diabetes", DIABETES_ROW, DIABETES_ROW, DIABETES_ROW)
    (value, *_) = [p["prediction"] for p in response.json()["predictions"]]
    truths = [value + 3.0, value - 1.0]
    label_each(client, prediction_ids(response)[:2], truths)
    errors = [abs(value - truth) for truth in truths]
    assert quality(client, "diabetes") == {
        1: {
            "predictions": 3,
            "labelled": 2,
            "accuracy": None,
            "mae": pytest.approx(sum(errors) / 2, rel=1e-12),
            "rmse": pytest.approx(math.sqrt(sum(e * e for e in errors) / 2), rel=1e-12),
        }
    }
    assert errors == pytest.approx([3.0, 1.0])


def test_regressor_errors_as_large_as_feedback_allows(client: TestClient) -> None:
    """The farthest ground truths feedback accepts on both sides: large errors, finite sums."""
    metadata = client.get("/models/diabetes").json()["versions"][0]
    span = metadata["target_max"] - metadata["target_min"]
    low, high = metadata["target_min"] - 10 * span, metadata["target_max"] + 10 * span
    response = predict(client, "diabetes", DIABETES_ROW, DIABETES_ROW)
    label_each(client, prediction_ids(response), [low, high])
    (value, _) = [p["prediction"] for p in response.json()["predictions"]]
    errors = [value - low, high - value]
    found = quality(client, "diabetes")[1]
    assert found["labelled"] == 2
    assert found["mae"] == pytest.approx(sum(errors) / 2, rel=1e-12)
    assert found["rmse"] == pytest.approx(math.sqrt((errors[0] ** 2 + errors[1] ** 2) / 2))


def test_errors_whose_squares_overflow_are_null_in_json(client: TestClient) -> None:
    """A log holding errors beyond what feedback accepts (an older Steward's, or rows written
    by hand): RMSE overflows in SQLite and is null, never Infinity; the rest still shows."""
    services: Services = client.app_state["services"]
    rows = [
        PredictionRecord(uuid.uuid4().hex, "diabetes", 1, datetime.now(UTC), (), (), 0.0)
        for _ in range(2)
    ]
    services.store.write_predictions(rows)
    services.store.label([Label(r.id, 1e200, None, 1e200, datetime.now(UTC)) for r in rows])
    assert quality(client, "diabetes")[1] == {
        "predictions": 2,
        "labelled": 2,
        "accuracy": None,
        "mae": 1e200,
        "rmse": None,
    }


def test_quality_of_a_model_with_no_predictions(client: TestClient) -> None:
    assert quality(client, "breast-cancer") == {
        1: {"predictions": 0, "labelled": 0, "accuracy": None, "mae": None, "rmse": None}
    }
    assert_error(client.get("/models/nope"), 404, "unknown_model")


def test_the_quality_window_is_a_setting(settings: Settings) -> None:
    """Predictions older than the window are left out: a 30 s window, a prediction 60 s old."""
    with TestClient(
        create_app(settings.model_copy(update={"quality_window_seconds": 30}))
    ) as client:
        services: Services = client.app_state["services"]
        old = PredictionRecord(
            uuid.uuid4().hex, "iris", 1, datetime.now(UTC) - timedelta(seconds=60), (), (), "x"
        )
        services.store.write_predictions([old])
        label_each(client, prediction_ids(predict(client, "iris", IRIS_SETOSA)), ["setosa"])
        assert client.get("/models/iris").json()["quality_window_seconds"] == 30
        assert quality(client, "iris") == {
            1: {"predictions": 1, "labelled": 1, "accuracy": 1.0, "mae": None, "rmse": None}
        }
