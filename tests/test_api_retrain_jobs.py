"""Retrain jobs over the admin API: POST /admin/models/{model}/retrain starts a real retraining
in its own process on a real demo registry, GET /admin/jobs/{id} follows it to the gate's
decision (the same one stored in the new version's metadata) or the error (too few labelled
rows, a store it cannot open: one line, no version written); predictions answer while it runs;
hostile bodies and ids get 4xx in the one error shape; the counter is exact."""

import re
import time
import uuid
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import (
    ADMIN_AUTH,
    ADMIN_TOKEN,
    IRIS_SETOSA,
    assert_error,
    metric,
    predict,
    prediction_ids,
    wait_until,
)
from sklearn.linear_model import LinearRegression
from sklearn.naive_bayes import GaussianNB

from app.aliases import read_alias_file, read_aliases
from app.artifacts import DataSource, TrainingData, read_metadata, save_version
from app.main import create_app
from app.registration import register_estimator
from app.settings import Settings
from app.training import fit_and_save

AUTH = ADMIN_AUTH
RETRAIN = "/admin/models/iris/retrain"
JOB_SECONDS = 120  # bounded wait for one retraining of the iris demo


def job_of(client: TestClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/admin/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    """The job once it ended, polled for at most JOB_SECONDS."""
    assert wait_until(
        lambda: job_of(client, job_id)["status"] in ("passed", "refused", "failed"),
        seconds=JOB_SECONDS,
    ), job_of(client, job_id)
    return job_of(client, job_id)


def count(client: TestClient, action: str, outcome: str) -> float:
    return metric(client, "steward_admin_actions_total", action=action, outcome=outcome)


def test_a_retrain_job_passes_the_gate_and_reports_what_metadata_records(
    admin: TestClient, models_dir: Path
) -> None:
    versions_before = read_metadata(models_dir, "iris", 1).version
    started = admin.post(RETRAIN, json={"then": "candidate"}, headers=AUTH)
    assert started.status_code == 202, started.text
    body = started.json()
    job_id = body["job"]
    assert re.fullmatch("[0-9a-f]{32}", job_id)
    assert body["status"] in ("queued", "running")
    assert body["links"] == {"self": f"/admin/jobs/{job_id}"}

    # Predictions answer while the retraining runs in its own process.
    answered_while_running = 0
    while job_of(admin, job_id)["status"] in ("queued", "running"):
        assert predict(admin, "iris", IRIS_SETOSA).status_code == 200
        answered_while_running += 1
    assert answered_while_running > 0

    job = finished(admin, job_id)
    assert job["status"] == "passed", job
    assert job["model"] == "iris"
    assert job["then"] == "candidate"
    assert job["since"] is None
    assert job["error"] is None
    assert job["ended"] >= job["started"]
    assert job["progress"] == "done: passed"
    result = job["result"]
    new = read_metadata(models_dir, "iris", result["version"])
    assert new.version > versions_before
    assert new.gate is not None
    assert result["decision"] == new.gate.model_dump(mode="json")
    assert result["decision"]["passed"] is True
    held_out = next(s for s in result["decision"]["sets"] if s["name"] == "held_out")
    assert held_out["verdict"] == "pass"
    assert held_out["rows"] > 0
    assert result["aliased"] == "candidate"
    assert read_aliases(models_dir, "iris")["candidate"] == new.version
    assert read_alias_file(models_dir, "iris").history[-1].by == "admin-api"
    assert result["data"]["production_version"] == new.gate.production_version
    assert result["search"] is None  # not asked for

    assert count(admin, "retrain", "ok") == 1


# The lines a retrain job's process prints, each advance of each step (app/progress.py).
JOB_LINE = re.compile(
    r"loading settings and the store|loading feedback: (started|\d+ labelled rows)"
    r"|search: \d+/\d+ fits|fit: (started|done)|evaluation: \d/2 sets( \(\w+( skipped)?\))?"
    r"|done: passed"
)


def test_a_search_job_shows_its_progress_and_returns_the_search_metadata_records(
    admin: TestClient, models_dir: Path
) -> None:
    started = admin.post(RETRAIN, json={"then": "keep", "search": True}, headers=AUTH)
    assert started.status_code == 202, started.text
    job_id = started.json()["job"]
    seen = []
    while (job := job_of(admin, job_id))["status"] in ("queued", "running"):
        if job["progress"] is not None and job["progress"] not in seen:
            seen.append(job["progress"])
        time.sleep(0.01)
    assert job["status"] == "passed", job
    assert job["progress"] == "done: passed"
    assert [line for line in seen if not JOB_LINE.fullmatch(line)] == []
    # 50 fits (5 folds, 10 candidates) take seconds: the polls see the search advance
    searched = [int(m[1]) for line in seen if (m := re.fullmatch(r"search: (\d+)/50 fits", line))]
    assert searched
    assert searched == sorted(searched)
    new = read_metadata(models_dir, "iris", job["result"]["version"])
    assert new.search is not None
    assert job["result"]["search"] == new.search.model_dump(mode="json")
    assert (new.search.method, new.search.folds, new.search.tried) == ("GridSearchCV", 5, 10)
    assert set(new.search.best_params) == {"model__C", "model__class_weight"}


def test_a_search_job_for_a_family_with_no_grid_fails_with_its_code_and_writes_nothing(
    models_dir: Path, admin_settings: Settings
) -> None:
    frame = pd.DataFrame({"a": np.arange(40, dtype=float), "b": np.arange(40, dtype=float) % 7})
    fit_and_save(
        models_dir, "nb", "classification", frame, pd.Series(np.where(frame["a"] > 19, "x", "y")),
        GaussianNB(), promote=True, description="No grid for its family.",
        data=TrainingData(sources=[DataSource(kind="csv", name="nb.csv", rows=40)]),
    )  # fmt: skip
    folders = sorted(p.name for p in (models_dir / "nb").iterdir())
    with TestClient(create_app(admin_settings), raise_server_exceptions=False) as admin:
        started = admin.post("/admin/models/nb/retrain", json={"search": True}, headers=AUTH)
        job_id = started.json()["job"]
        job = finished(admin, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "no_search_grid"
    assert job["error"]["message"] == (
        "nb v1: --search has no grid for GaussianNB (the families it knows: docs/operations.md, "
        "Hyperparameter search); retrain without --search"
    )
    assert sorted(p.name for p in (models_dir / "nb").iterdir()) == folders  # nothing written


def test_a_second_retrain_of_a_model_while_one_runs_is_409_naming_it(admin: TestClient) -> None:
    first = admin.post(RETRAIN, json={"then": "keep"}, headers=AUTH).json()["job"]
    error = assert_error(admin.post(RETRAIN, json={}, headers=AUTH), 409, "retrain_running")
    assert error["details"] == [{"field": "job", "message": first}]
    assert finished(admin, first)["status"] == "passed"
    # Once it ended, the model may be retrained again.
    again = admin.post(RETRAIN, json={"then": "keep"}, headers=AUTH)
    assert again.status_code == 202, again.text
    assert again.json()["job"] != first
    finished(admin, again.json()["job"])
    assert count(admin, "retrain", "ok") == 2
    assert count(admin, "retrain", "error") == 1


def test_a_model_with_no_recipe_fails_its_job_with_the_code_and_one_line(
    models_dir: Path, admin_settings: Settings
) -> None:
    v1 = read_metadata(models_dir, "iris", 1)
    odd = save_version(models_dir, v1, {"not": "an estimator"}, promote=True)
    folders = sorted(p.name for p in (models_dir / "iris").iterdir())
    with TestClient(create_app(admin_settings), raise_server_exceptions=False) as admin:
        job_id = admin.post(RETRAIN, json={"then": "promote"}, headers=AUTH).json()["job"]
        job = finished(admin, job_id)
    assert job["status"] == "failed"
    assert job["result"] is None
    assert job["error"]["code"] == "no_recipe"
    assert f"iris v{odd.version} has no recipe to retrain" in job["error"]["message"]
    assert "\n" not in job["error"]["message"]
    assert sorted(p.name for p in (models_dir / "iris").iterdir()) == folders  # nothing written


def test_too_few_labelled_rows_fail_the_job_with_the_count_and_the_minimum(
    tmp_path: Path, models_dir: Path
) -> None:
    """A model registered from elsewhere keeps no training data: it retrains on feedback alone,
    and 9 labelled rows (sent through /predict and /feedback) are fewer than it needs."""
    x = np.arange(40, dtype=float).reshape(20, 2)
    artifact, sample = tmp_path / "model.joblib", tmp_path / "inputs.csv"
    joblib.dump(LinearRegression().fit(x, 2 * x[:, 0]), artifact)
    pd.DataFrame(x, columns=["a", "b"]).to_csv(sample, index=False)
    register_estimator(models_dir, artifact, "line", sample)
    settings = Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        admin_token=ADMIN_TOKEN,
        reload_interval_seconds=0,
        retrain_holdout_seconds=0,  # no recent window: every labelled row is for training
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as admin:
        rows = [{"a": float(2 * i), "b": float(2 * i + 1)} for i in range(9)]
        ids = prediction_ids(predict(admin, "line", *rows))
        items = [{"prediction_id": i, "ground_truth": 4.0 * n} for n, i in enumerate(ids)]
        assert admin.post("/feedback", json={"items": items}).status_code == 200
        started = admin.post("/admin/models/line/retrain", json={"then": "promote"}, headers=AUTH)
        job = finished(admin, started.json()["job"])
    assert job["status"] == "failed"
    assert job["result"] is None
    assert job["error"] == {
        "code": "training_data_refused",
        "message": "line v1: need at least 10 labelled rows, got 9 of feedback (registered: "
        "trained elsewhere, Steward holds no training data): pass --csv with its data",
    }
    assert sorted(p.name for p in (models_dir / "line").iterdir() if p.is_dir()) == ["1"]
    assert read_aliases(models_dir, "line") == {"production": 1}


def test_a_store_the_job_cannot_open_fails_it_in_one_line_and_writes_no_version(
    admin: TestClient, admin_settings: Settings, models_dir: Path
) -> None:
    """The store becomes unreadable while the server runs (a folder where its SQLite file
    was; the server keeps the file it opened): the job's process cannot open it."""
    stored = admin_settings.data_dir / "steward.db"
    stored.rename(stored.with_name("moved.db"))
    stored.mkdir()
    job = finished(admin, admin.post(RETRAIN, json={"then": "promote"}, headers=AUTH).json()["job"])
    assert job["status"] == "failed"
    assert job["result"] is None
    assert job["error"] == {
        "code": "store_unavailable",
        "message": "prediction store failed to create its schema: unable to open database file",
    }
    assert sorted(p.name for p in (models_dir / "iris").iterdir() if p.is_dir()) == ["1"]
    assert read_aliases(models_dir, "iris") == {"production": 1}
    assert predict(admin, "iris", IRIS_SETOSA).status_code == 200  # the server still serves


def test_since_is_handed_to_the_job_and_the_counter_is_exact(admin: TestClient) -> None:
    assert count(admin, "retrain", "ok") == 0  # the series start at 0
    assert count(admin, "job", "ok") == 0
    started = admin.post(
        RETRAIN, json={"then": "keep", "since": "2026-01-01T00:00:00"}, headers=AUTH
    ).json()["job"]
    job = finished(admin, started)
    assert job["since"] == "2026-01-01T00:00:00Z"
    assert job["status"] == "passed"
    assert job["result"]["aliased"] is None
    polls = count(admin, "job", "ok")
    admin.get(f"/admin/jobs/{started}", headers=AUTH)
    admin.get(f"/admin/jobs/{uuid.uuid4().hex}", headers=AUTH)
    admin.get(f"/admin/jobs/{started}")
    assert count(admin, "job", "ok") == polls + 1
    assert count(admin, "job", "error") == 1
    assert count(admin, "job", "denied") == 1
    assert count(admin, "retrain", "ok") == 1


# --- The token, hostile bodies and ids ---------------------------------------------------------


def test_the_retrain_routes_need_the_token(admin: TestClient, client: TestClient) -> None:
    assert_error(client.post(RETRAIN, json={}, headers=AUTH), 403, "admin_disabled")
    assert_error(client.get(f"/admin/jobs/{uuid.uuid4().hex}", headers=AUTH), 403, "admin_disabled")
    assert_error(admin.post(RETRAIN, json={}), 401, "unauthorized")
    wrong = {"Authorization": "Bearer wrong"}
    assert_error(admin.post(RETRAIN, json={}, headers=wrong), 401, "unauthorized")
    assert_error(admin.get(f"/admin/jobs/{uuid.uuid4().hex}"), 401, "unauthorized")
    assert count(admin, "retrain", "denied") == 2  # each app counts its own calls
    assert count(client, "retrain", "denied") == 1
    assert count(client, "job", "denied") == 1
    assert count(admin, "job", "denied") == 1
    assert count(admin, "retrain", "ok") == 0


@pytest.mark.parametrize(
    "body",
    [
        {"then": "production"},
        {"then": None},
        {"then": 1},
        {"extra": True},
        {"since": "not a date"},
        {"since": 0},
        {"since": "x" * 100_000},
        {"since": "99999-01-01"},
        {"since": "0001-01-01T00:00:00+14:00"},  # out of range once in UTC
        {"since": "9999-12-31T23:59:59-14:00"},
        {"since": "2999-01-01"},  # the future: no feedback since then
        {"search": "true"},
        {"search": 1},
        {"search": None},
        [],
        "candidate",
    ],
)
def test_hostile_retrain_bodies_are_422(admin: TestClient, body: object) -> None:
    error = assert_error(admin.post(RETRAIN, json=body, headers=AUTH), 422, "validation_error")
    assert "x" * 100 not in str(error)
    assert count(admin, "retrain", "error") == 1
    assert admin.get("/readyz").status_code == 200


def test_no_body_starts_a_job_with_every_default(admin: TestClient) -> None:
    answer = admin.post(RETRAIN, headers=AUTH)
    assert answer.status_code == 202, answer.text
    job = admin.get(f"/admin/jobs/{answer.json()['job']}", headers=AUTH).json()
    assert (job["then"], job["since"]) == ("candidate", None)
    finished(admin, job["job"])


def test_duplicate_keys_and_broken_json_are_400(admin: TestClient) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    for raw in (b'{"then": "keep", "then": "promote"}', b'{"then": ', b"\xef\xbb\xbf{}"):
        response = admin.post(RETRAIN, content=raw, headers=headers)
        assert response.status_code in (400, 422), response.text
        assert set(response.json()) == {"error"}


def test_an_unknown_model_is_404_without_echo(admin: TestClient) -> None:
    for name in ("nope", "IRIS", "iris..", "m" * 300):
        response = admin.post(f"/admin/models/{name}/retrain", json={}, headers=AUTH)
        error = assert_error(response, 404, "unknown_model")
        assert name not in str(error)


def test_unknown_or_malformed_job_ids_are_404_without_echo(admin: TestClient) -> None:
    real = admin.post(RETRAIN, json={"then": "keep"}, headers=AUTH).json()["job"]
    dashed = str(uuid.UUID(real))
    for job_id in (uuid.uuid4().hex, real.upper(), dashed, "0", "z" * 32, "j" * 10_000, "%00"):
        error = assert_error(admin.get(f"/admin/jobs/{job_id}", headers=AUTH), 404, "unknown_job")
        assert job_id not in str(error)
    finished(admin, real)
    assert admin.get("/readyz").status_code == 200
