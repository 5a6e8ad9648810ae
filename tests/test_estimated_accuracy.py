"""Estimated accuracy (the mean top-class probability over the drift window) against the
accuracy realised on feedback, on labelled streams from a known logistic model.

A LogisticRegression trained on data drawn from a logistic model is calibrated, so over a
fresh stream from the same generator its mean confidence is the accuracy it will realise: each
row is right with probability its confidence ``c``, so realised - estimated has a standard error
of ``sqrt(sum c (1 - c)) / n`` (at most 0.5 / sqrt(n), 0.011 at n = 2000); they must agree
within 3 of those. When the labels flip under it (concept drift the inputs do not show), the
estimate stays where it was and the realised accuracy drops: the documented limit, and the gap
the dashboard shows.
"""

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import metric

from app.artifacts import read_metadata
from app.main import create_app
from app.settings import Settings
from app.training import train_csv

WEIGHTS = np.array([1.2, -0.8, 0.5])
BIAS = 0.2
FEATURES = ("x1", "x2", "x3")
TRAINING_ROWS = 4000
STREAM_ROWS = 2000
BATCH = 1000  # STEWARD_MAX_INSTANCES and STEWARD_MAX_FEEDBACK_ITEMS' default


def _logistic(seed: int, rows: int, flipped: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rows x ~ N(0, 1) and labels y ~ Bernoulli(sigmoid(w.x + b)) (1 - that when ``flipped``)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(WEIGHTS)))
    p = 1 / (1 + np.exp(-(x @ WEIGHTS + BIAS)))
    y = (rng.random(rows) < (1 - p if flipped else p)).astype(int)
    return x, y


@pytest.fixture(scope="module")
def logistic_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logistic")
    x, y = _logistic(seed=1, rows=TRAINING_ROWS)
    csv = root / "logistic.csv"
    pd.DataFrame({**{f: x[:, i] for i, f in enumerate(FEATURES)}, "y": y}).to_csv(csv, index=False)
    train_csv(root / "models", csv, "y", "logistic", promote=True)
    return root / "models"


@pytest.fixture
def logistic(tmp_path: Path, logistic_models: Path) -> Iterator[TestClient]:
    settings = Settings(
        models_dir=logistic_models,
        data_dir=tmp_path / "data",
        drift_window_rows=STREAM_ROWS,
        drift_interval_seconds=3600,  # scored when the test says (refresh)
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _serve_and_label(client: TestClient, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Predict every row, post its ground truth; the top-class probability of each row and
    whether it was right (1.0) or not (0.0), as the responses say."""
    confidences, correct = [], []
    for start in range(0, len(x), BATCH):
        rows = [dict(zip(FEATURES, map(float, r), strict=True)) for r in x[start : start + BATCH]]
        response = client.post("/predict/logistic", json={"instances": rows})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        items = [
            {"prediction_id": p["id"], "ground_truth": int(truth)}
            for p, truth in zip(predictions, y[start : start + BATCH], strict=True)
        ]
        feedback = client.post("/feedback", json={"items": items})
        assert feedback.status_code == 200, feedback.text
        for p, truth in zip(predictions, y[start : start + BATCH], strict=True):
            confidences.append(max(p["probabilities"].values()))
            correct.append(float(p["prediction"] == truth))
    return [*confidences, math.fsum(correct) / len(correct)]


def _drift(client: TestClient) -> dict[str, Any]:
    services = client.app_state["services"]
    assert client.portal is not None
    client.portal.call(services.drift.refresh)
    response = client.get("/models/logistic/drift")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def test_estimated_accuracy_agrees_with_the_realised_one_when_calibrated(
    logistic: TestClient,
) -> None:
    x, y = _logistic(seed=2, rows=STREAM_ROWS)
    *confidences, accuracy = _serve_and_label(logistic, x, y)
    report = _drift(logistic)
    assert report["window_rows"] == STREAM_ROWS
    assert report["labelled"] == STREAM_ROWS
    assert report["realised_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert report["estimated_accuracy"] == pytest.approx(math.fsum(confidences) / STREAM_ROWS)
    standard_error = math.sqrt(math.fsum(c * (1 - c) for c in confidences)) / STREAM_ROWS
    assert 0.005 < standard_error < 0.5 / math.sqrt(STREAM_ROWS)
    gap = abs(report["estimated_accuracy"] - report["realised_accuracy"])
    assert gap < 3 * standard_error, (report["estimated_accuracy"], accuracy, standard_error)
    series = metric(logistic, "steward_estimated_accuracy", model="logistic", version="1")
    assert series == pytest.approx(report["estimated_accuracy"], rel=1e-12)
    # the same generator as training: its inputs have not moved
    assert report["status"] == "ok", report
    assert metric(logistic, "steward_model_drift_status", model="logistic", version="1") == 0


def test_when_labels_flip_the_estimate_stays_high_and_the_realised_accuracy_drops(
    logistic: TestClient,
) -> None:
    """The inputs do not move, the truth does: nothing a model's confidence can see."""
    x, y = _logistic(seed=3, rows=STREAM_ROWS, flipped=True)
    *confidences, accuracy = _serve_and_label(logistic, x, y)
    report = _drift(logistic)
    assert report["realised_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    estimated = math.fsum(confidences) / STREAM_ROWS
    assert report["estimated_accuracy"] == pytest.approx(estimated)
    # calibrated, it expects about 0.72 here; with labels drawn from 1 - p it realises 1 - that
    standard_error = math.sqrt(math.fsum(c * (1 - c) for c in confidences)) / STREAM_ROWS
    assert abs(report["realised_accuracy"] - (1 - estimated)) < 3 * standard_error
    assert report["estimated_accuracy"] > 0.65
    assert report["estimated_accuracy"] - report["realised_accuracy"] > 0.3
    assert report["status"] == "ok"  # input drift cannot see it either


def test_no_estimate_without_probabilities(tmp_path: Path, models_dir: Path) -> None:
    """A regressor (diabetes) and a classifier without predict_proba (breast-cancer's
    RidgeClassifier) have no estimated accuracy and no series; iris has both."""
    settings = Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        drift_min_rows=5,
        drift_interval_seconds=3600,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for model in ("iris", "breast-cancer", "diabetes"):
            features = read_metadata(models_dir, model, 1).features
            row = {f.name: ((f.min or 0.0) + (f.max or 0.0)) / 2 for f in features}
            response = client.post(f"/predict/{model}", json={"instances": [row] * 6})
            assert response.status_code == 200, response.text
        services = client.app_state["services"]
        assert client.portal is not None
        client.portal.call(services.drift.refresh)
        reports = {m: client.get(f"/models/{m}/drift").json() for m in ("iris", "breast-cancer")}
        reports["diabetes"] = client.get("/models/diabetes/drift").json()
        assert reports["iris"]["window_rows"] == 6
        assert 0 < reports["iris"]["estimated_accuracy"] <= 1
        assert metric(client, "steward_estimated_accuracy", model="iris", version="1") == (
            pytest.approx(reports["iris"]["estimated_accuracy"])
        )
        text = client.get("/metrics").text
        for model in ("breast-cancer", "diabetes"):
            assert reports[model]["window_rows"] == 6
            assert reports[model]["estimated_accuracy"] is None
            assert f'steward_estimated_accuracy{{model="{model}"' not in text
            assert f'steward_drift_window_rows{{model="{model}",version="1"}} 6.0' in text
