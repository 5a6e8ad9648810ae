"""GET /models and /models/{model}."""

import json

from fastapi.testclient import TestClient
from helpers import assert_error, metric

from app.artifacts import METADATA
from app.main import create_app
from app.settings import Settings


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
