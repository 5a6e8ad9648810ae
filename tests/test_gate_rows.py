"""The gate scores both versions only on the rows each accepts as served: a recent row in a
category production refuses (another version served it, and a retraining learns it) is left
out and counted, never a crash that quotes it; a job's unexpected error says its type only."""

import json
from datetime import timedelta
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import run_cli, write_labelled
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from test_api_retrain_jobs import AUTH, finished
from test_retraining import score

from app.artifacts import read_metadata
from app.gate import judge
from app.main import create_app
from app.registration import register_estimator
from app.settings import Settings
from app.store import open_store
from app.training import train_csv

SECRET = "SECRET-CATEGORY"


def register(models: Path, tmp_path: Path, categories: list[str]) -> None:
    """A pipeline that refuses unseen categories (OneHotEncoder(handle_unknown="error")),
    fitted on ``categories``, registered from a sample of its inputs."""
    rng = np.random.default_rng(len(categories))
    x = pd.DataFrame(
        {"x": rng.normal(size=60), "c": [categories[i % len(categories)] for i in range(60)]}
    )
    pipeline = Pipeline(
        [
            ("prepare", ColumnTransformer(
                [("c", OneHotEncoder(handle_unknown="error"), ["c"]), ("x", "passthrough", ["x"])]
            )),
            ("model", LogisticRegression()),
        ]
    )  # fmt: skip
    artifact, sample = tmp_path / "model.joblib", tmp_path / "inputs.csv"
    joblib.dump(pipeline.fit(x, np.where(x["x"] > 0, "yes", "no")), artifact)
    x.to_csv(sample, index=False)
    register_estimator(models, artifact, "churn", sample, promote=len(categories) == 2)


def test_recent_rows_production_refuses_are_left_out_of_the_gate_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    register(models, tmp_path, ["a", "b"])  # v1, production
    register(models, tmp_path, ["a", "b", SECRET])  # v2: knows the third category
    v1 = read_metadata(models, "churn", 1)
    assert v1.features[1].categories == ["a", "b"]
    assert not v1.features[1].open_categories
    settings = Settings(models_dir=models, data_dir=tmp_path / "data")
    store = open_store(settings.store_url)
    try:  # served by v2: 24 rows two days ago, 6 in the last day (held out), 2 in SECRET
        categories = ["a", "b", SECRET]
        old = [(timedelta(days=2, minutes=i), i / 4 - 3, categories[i % 3]) for i in range(24)]
        recent = [(timedelta(hours=i), i - 2.5, categories[i % 3]) for i in range(6)]
        rows = [(t, {"x": x, "c": c}, "yes" if x > 0 else "no") for t, x, c in [*old, *recent]]
        write_labelled(store, "churn", rows, version=2)
    finally:
        store.close()
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STEWARD_GATE_MIN_ROWS", "4")  # the 4 rows both versions take

    code, out, err = run_cli(capsys, "--models-dir", str(models), "retrain", "churn")
    assert (code, err) == (0, ""), err
    assert SECRET not in out
    note = (
        "2 of 6 rows left out: a version refuses them as served (production v1 2, the new "
        "version 0)"
    )
    assert f"recent: {note}" in out
    new = read_metadata(models, "churn", 3)
    assert new.features[1].categories == sorted(["a", "b", SECRET])  # the retraining learnt it
    assert new.gate is not None
    held_out, window = new.gate.sets
    assert held_out.verdict == "skipped"
    taken = pd.DataFrame(  # oldest first
        [{"x": x, "c": c} for _, x, c in reversed(recent) if c != SECRET]
    )
    labels = pd.Series(np.where(taken["x"] > 0, "yes", "no"))
    expected = judge(
        "recent",
        4,
        score(models, v1, taken, labels),
        score(models, new, taken, labels),
        "accuracy",
        0.01,
    )
    assert window == expected.model_copy(update={"excluded": 2, "note": note})


def test_a_job_that_fails_unexpectedly_reports_the_error_type_never_its_message(
    tmp_path: Path,
    models_dir: Path,
    admin_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CSV version's metadata edited by hand to name a label column its copy does not hold:
    the job fails on a KeyError whose message is that name, and the job says the type only."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    csv = tmp_path / "churn.csv"
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "churned": x[:, 0] > 0}).to_csv(csv, index=False)
    train_csv(models_dir, csv, "churned", "churn", promote=True)
    folder = models_dir / "churn" / "1"
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["training_data"]["target"] = SECRET
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with TestClient(create_app(admin_settings), raise_server_exceptions=False) as admin:
        answer = admin.post("/admin/models/churn/retrain", json={"then": "keep"}, headers=AUTH)
        assert answer.status_code == 202, answer.text
        job = finished(admin, answer.json()["job"])
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "retrain_failed",
        "message": "KeyError: unexpected error in the retraining (its traceback is in the "
        "server's log)",
    }
    (logged,) = [r for r in caplog.records if "the end of its stderr" in r.getMessage()]
    assert logged.levelname == "WARNING"
    assert "Traceback" in logged.getMessage()
    assert "KeyError" in logged.getMessage()


def test_a_failed_jobs_message_is_one_line_of_at_most_300_characters(
    tmp_path: Path, models_dir: Path, admin_settings: Settings
) -> None:
    """A registered model keeps no data and got no feedback: the refusal quotes its metadata's
    no_copy_reason, here edited by hand to 2,000 characters over many lines."""
    register(models_dir, tmp_path, ["a", "b"])
    folder = models_dir / "churn" / "1"
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["training_data"]["no_copy_reason"] = "a very long reason\n" * 105
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with TestClient(create_app(admin_settings), raise_server_exceptions=False) as admin:
        answer = admin.post("/admin/models/churn/retrain", json={"then": "keep"}, headers=AUTH)
        assert answer.status_code == 202, answer.text
        job = finished(admin, answer.json()["job"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "training_data_refused"
    message = job["error"]["message"]
    assert message.startswith("churn v1: need at least 10 labelled rows, got 0 of feedback (a ")
    assert len(message) == 300
    assert message.endswith("…")
    assert "\n" not in message
