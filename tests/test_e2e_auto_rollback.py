"""The automatic rollback through a real `steward serve` and the real CLI in another process:
v1 serves and is labelled right -> `steward promote iris 2` -> v2's labels say it is wrong ->
the server rolls production back to v1 by itself, logs why, counts it, and serves v1 again."""

import os
import shutil
import subprocess
from pathlib import Path

import httpx2
from helpers import IRIS_SETOSA, wait_until
from server import STEWARD, free_port, serving

from app.aliases import read_alias_file
from app.training import train_demo


def serve_and_label(http: httpx2.Client, rows: int, right: bool) -> int:
    """``rows`` iris predictions in one request, each labelled right or wrong; the version that
    served them."""
    body = http.post("/predict/iris", json={"instances": [IRIS_SETOSA] * rows}).json()
    items = []
    for prediction in body["predictions"]:
        predicted = prediction["prediction"]
        truth = predicted if right else ("virginica" if predicted != "virginica" else "setosa")
        items.append({"prediction_id": prediction["id"], "ground_truth": truth})
    assert http.post("/feedback", json={"items": items}).json()["accepted"] == rows
    version: int = body["version"]
    return version


def test_a_worse_promote_is_rolled_back_by_the_server(demo_models: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(demo_models, models)
    train_demo(models)  # version 2 of each model; production stays 1
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        "STEWARD_AUTO_ROLLBACK": "true",
        "STEWARD_AUTO_ROLLBACK_MIN_LABELS": "5",
        "STEWARD_AUTO_ROLLBACK_INTERVAL_SECONDS": "0.3",
        "STEWARD_RELOAD_INTERVAL_SECONDS": "0.3",
    }
    port = free_port()
    log = tmp_path / "steward.log"
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with (
        serving(argv, port=port, env=env, log=log, ready="/readyz") as steward,
        httpx2.Client(base_url=steward.url, timeout=30) as http,
    ):
        assert serve_and_label(http, 5, right=True) == 1
        promoted = subprocess.run(
            [STEWARD, "promote", "iris", "2"], env=env, capture_output=True, text=True
        )
        assert promoted.returncode == 0, promoted.stderr

        def swapped_to(version: int) -> bool:
            answer = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]}).json()
            return bool(answer["version"] == version)

        assert wait_until(lambda: swapped_to(2)), log.read_text()
        assert http.get("/models/iris").json()["auto_rollback"]["state"] == "waiting"
        assert serve_and_label(http, 5, right=False) == 2  # accuracy 0 against 1.0

        assert wait_until(lambda: swapped_to(1)), log.read_text()
        assert read_alias_file(models, "iris").aliases["production"] == 1
        last = read_alias_file(models, "iris").history[-1]
        assert (last.action, last.from_, last.to, last.by) == ("rollback", 2, 1, "auto-rollback")
        metrics = http.get("/metrics").text
        assert 'steward_rollbacks_total{model="iris",reason="accuracy_drop"} 1.0' in metrics
        assert 'steward_rollbacks_total{model="iris",reason="manual"} 0.0' in metrics
        assert http.get("/models/iris").json()["auto_rollback"]["state"] == "idle"
    lines = [line for line in log.read_text().splitlines() if "auto-rollback iris:" in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0]
    assert "production v2 -> v1 (accuracy_drop): worse by more than the margin (0.05): " in lines[0]
    assert "v2 accuracy 0.0000 over 5 labels since its promote" in lines[0]
    assert "v1 1.0000 over 5 before it" in lines[0]
