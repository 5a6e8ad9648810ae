"""End to end: a real `steward serve` on the demo models serves them through their compiled
twins, says so, and answers the held-out rows as scikit-learn does from the artifact."""

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server import STEWARD, free_port, serving

from app.artifacts import load_estimator, read_metadata
from app.training_rows import stored_held_out_matrix
from app.twins import PROBABILITY_TOLERANCE, VALUE_TOLERANCE


@pytest.fixture
def http(tmp_path: Path, models_dir: Path) -> Iterator[httpx2.Client]:
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with (
        serving(argv, port=port, env=env, log=tmp_path / "server.log", ready="/readyz") as served,
        httpx2.Client(base_url=served.url, timeout=30) as client,
    ):
        yield client


def held_out(models_dir: Path, name: str) -> tuple[list[dict[str, float]], Any, Any]:
    """The demo's held-out rows as /predict instances, and scikit-learn's own answers to them
    (the estimator read from the artifact here, not from the server)."""
    metadata = read_metadata(models_dir, name, 1)
    matrix, source = stored_held_out_matrix(models_dir, metadata)
    assert source == "demo"
    names = [f.name for f in metadata.features]
    instances = [dict(zip(names, row, strict=True)) for row in np.asarray(matrix).tolist()]
    estimator = load_estimator(models_dir, metadata)
    if metadata.has_proba:
        return instances, estimator.predict_proba(matrix), metadata.classes
    return instances, estimator.predict(matrix), None


def test_a_real_server_serves_the_demos_through_their_twins_with_scikit_learns_answers(
    http: httpx2.Client, models_dir: Path
) -> None:
    for name in ("iris", "breast-cancer", "diabetes"):
        (entry,) = http.get(f"/models/{name}").json()["loaded"]
        assert (entry["runtime"], entry["fallback"]) == ("onnxruntime", None), name
    runtime = {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(http.get("/metrics").text)
        for sample in family.samples
        if sample.name == "steward_model_runtime"
    }
    assert runtime == {
        (("fallback", "none"), ("model", name), ("runtime", "onnxruntime"), ("version", "1")): 1.0
        for name in ("iris", "breast-cancer", "diabetes")
    }

    rows, proba, classes = held_out(models_dir, "iris")
    response = http.post("/predict/iris", json={"instances": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["prediction"] for p in predictions] == [classes[i] for i in proba.argmax(axis=1)]
    served = np.array([[p["probabilities"][str(c)] for c in classes] for p in predictions])
    assert float(np.abs(served - proba).max()) <= PROBABILITY_TOLERANCE

    rows, values, _ = held_out(models_dir, "diabetes")
    response = http.post("/predict/diabetes", json={"instances": rows})
    assert response.status_code == 200, response.text
    got = np.array([p["prediction"] for p in response.json()["predictions"]])
    assert got.shape == values.shape
    relative = np.abs(got - values) / np.maximum(1.0, np.abs(values))
    assert all(math.isfinite(v) for v in got)
    assert float(relative.max()) <= VALUE_TOLERANCE
