"""Versions saved before profiles had bins: their reference is rebuilt from the rows they were
trained on where those are stored, and otherwise they report no reference and serve as ever."""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import IRIS_SETOSA, IRIS_VIRGINICA, plan_churn_csv, predict, wait_until

from app.artifacts import METADATA, read_metadata
from app.main import create_app
from app.settings import Settings
from app.training import train_csv

LEGACY_KEYS = ("probabilities", "quantiles", "frequencies")


def as_before_drift_scores(root: Path, name: str, version: int = 1) -> dict[str, Any]:
    """Rewrite a version's profile as Steward wrote it before drift scores (quantiles or
    frequencies only); the profile it had."""
    path = root / name / str(version) / METADATA
    metadata = json.loads(path.read_text())
    profile = metadata["reference_profile"]
    metadata["reference_profile"] = {
        feature: {key: value for key, value in one.items() if key in LEGACY_KEYS}
        for feature, one in profile.items()
    }
    path.write_text(json.dumps(metadata))
    return dict(profile)


def drift_settings(tmp_path: Path, models_dir: Path) -> Settings:
    return Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        drift_interval_seconds=0.05,
        drift_min_rows=1,
    )


def scored(client: TestClient, model: str, rows: int = 0) -> dict[str, Any]:
    """The model's drift report once a round has scored it, with at least ``rows`` values in
    each feature's window (a round may run between start-up and the first request)."""
    reports: list[dict[str, Any]] = []

    def done() -> bool:
        reports.append(client.get(f"/models/{model}/drift").json())
        report = reports[-1]
        return report["computed_at"] is not None and all(
            f["window_values"] >= rows for f in report["features"]
        )

    assert wait_until(done, seconds=20)
    return reports[-1]


def test_a_demo_saved_before_drift_scores_is_profiled_again_from_its_dataset(
    tmp_path: Path, models_dir: Path
) -> None:
    """Rebuilt from scikit-learn's iris rows, the profile scores a request exactly as the one
    training saved; the version's folder is left as it was."""
    untouched = tmp_path / "untouched"
    shutil.copytree(models_dir, untouched)
    as_before_drift_scores(models_dir, "iris")
    before = (models_dir / "iris/1" / METADATA).read_bytes()
    reports = []
    for root in (models_dir, untouched):
        with TestClient(create_app(drift_settings(tmp_path / root.name, root))) as client:
            assert predict(client, "iris", IRIS_SETOSA, IRIS_VIRGINICA).status_code == 200
            reports.append(scored(client, "iris"))
    rebuilt, original = reports
    assert (rebuilt["reference_source"], original["reference_source"]) == ("demo", "metadata")
    assert rebuilt["reference_rows"] == read_metadata(untouched, "iris", 1).training_rows
    assert rebuilt["status"] == original["status"] != "no_reference"
    for a, b in zip(rebuilt["features"], original["features"], strict=True):
        assert (a["name"], a["psi"], a["ks"]) == (b["name"], b["psi"], b["ks"])
        assert a["psi"] is not None
    assert (models_dir / "iris/1" / METADATA).read_bytes() == before


def test_a_csv_version_is_profiled_again_from_its_kept_rows(tmp_path: Path) -> None:
    root = tmp_path / "models"
    train_csv(root, plan_churn_csv(tmp_path / "churn.csv"), "churned", "churn")
    as_before_drift_scores(root, "churn")
    with TestClient(create_app(drift_settings(tmp_path, root))) as client:
        response = predict(client, "churn", {"plan": "basic", "months": 3})
        assert response.status_code == 200
        report = scored(client, "churn", rows=1)
    assert report["reference_source"] == "training_copy"
    assert report["reference_rows"] == 90
    assert all(f["psi"] is not None for f in report["features"])


@pytest.mark.parametrize("broken", ["legacy", "missing", "corrupt"])
def test_without_stored_rows_a_version_has_no_reference_and_serves(
    tmp_path: Path, broken: str
) -> None:
    root = tmp_path / "models"
    train_csv(root, plan_churn_csv(tmp_path / "churn.csv"), "churned", "churn", copy_max_bytes=0)
    path = root / "churn/1" / METADATA
    if broken == "legacy":
        as_before_drift_scores(root, "churn")
    else:
        metadata = json.loads(path.read_text())
        if broken == "missing":
            del metadata["reference_profile"]
        else:
            metadata["reference_profile"]["months"]["shares"] = [2.0, "x"]
        path.write_text(json.dumps(metadata))
    with TestClient(create_app(drift_settings(tmp_path, root))) as client:
        for _ in range(3):
            assert predict(client, "churn", {"plan": "basic", "months": 3}).status_code == 200
        report = scored(client, "churn")
        metrics = client.get("/metrics").text
    assert report["status"] == "no_reference"
    assert report["reference_source"] is None
    assert "keeps no copy of its training data" in report["reason"]
    assert {f["status"] for f in report["features"]} == {"no_reference"}
    assert 'steward_model_drift_status{model="churn",version="1"} -1.0' in metrics
    assert "steward_feature_drift_psi{" not in metrics
