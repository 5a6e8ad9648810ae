"""GET /models and /models/{model}, and how a run-time swap shows on them and elsewhere."""

import json

from fastapi.testclient import TestClient
from helpers import IRIS_SETOSA, assert_error, metric, predict

from app.artifacts import METADATA
from app.main import create_app
from app.services import Services
from app.settings import Settings
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
    }


def test_model_detail(client: TestClient) -> None:
    body = client.get("/models/iris").json()
    assert body["aliases"] == {"production": 1}
    assert body["loaded"] == [{"version": 1, "aliases": ["production"], "sklearn_mismatch": None}]
    assert body["refusals"] == []
    (version,) = body["versions"]
    assert version["classes"] == ["setosa", "versicolor", "virginica"]
    assert len(version["sha256"]) == 64
    assert set(version["reference_profile"]) == {f["name"] for f in version["features"]}


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
            {"version": 2, "aliases": ["production"], "sklearn_mismatch": None}
        ]
        assert [(m.name, m.version) for m in predictor.batcher.keys if m.name == "iris"] == [
            ("iris", 2)
        ]
        assert predict(client, "iris", IRIS_SETOSA).json()["version"] == 2
