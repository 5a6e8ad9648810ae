"""The baselines of ``make bench`` (bench/naive.py) answer what Steward answers: each started for
real as the bench starts it (one uvicorn process, the demo registry), the same rows sent to it
and to Steward, the same predictions back. A baseline that read the features in another order,
or loaded another version, would be fast at the wrong job."""

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from load import post_json
from speed import BASELINES, start

MODELS = ("iris", "breast-cancer", "diabetes")


def varied_rows(models_dir: Path, name: str, count: int = 12) -> list[dict[str, float]]:
    """``count`` rows spread over each feature's training range, differently per feature, the
    keys in reverse order (not the model's): the baseline must put them in feature order."""
    metadata = json.loads((models_dir / name / "1" / "metadata.json").read_text())
    features = metadata["features"]
    rows = []
    for i in range(count):
        row = {}
        for j, f in enumerate(reversed(features)):
            share = ((i * 7 + j * 3) % 11) / 10
            row[f["name"]] = round(f["min"] + (f["max"] - f["min"]) * share, 4)
        rows.append(row)
    return rows


@pytest.mark.parametrize("baseline", list(BASELINES))
def test_baseline_answers_as_steward(
    baseline: str, demo_models: Path, client: TestClient, tmp_path: Path
) -> None:
    with start(baseline, tmp_path, demo_models) as server:
        for name in MODELS:
            rows = varied_rows(demo_models, name)
            answer = client.post(f"/predict/{name}", json={"instances": rows})
            assert answer.status_code == 200
            ours: list[Any] = [p["prediction"] for p in answer.json()["predictions"]]
            theirs = post_json(f"{server.url}/predict/{name}", {"instances": rows})["predictions"]
            if name == "diabetes":  # a regressor: floats, from one model call or another
                assert theirs == pytest.approx(ours, rel=1e-12)
            else:
                assert theirs == ours
                assert len(set(ours)) > 1, "rows that all get one class would prove little"
