"""Small helpers shared by the tests: request rows, metric reading, store inspection.

A real server process is started with bench/server.py, which the benchmark uses too.
"""

import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
from fastapi.testclient import TestClient
from httpx2 import Client, Response
from prometheus_client.parser import text_string_to_metric_families

from app.artifacts import load_estimator, read_metadata, save_version
from app.cli import main
from app.store import Label, PredictionRecord, PredictionStore, SqlStore, open_store

ADMIN_TOKEN = "s3cret-admin-token-0123456789"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
IRIS_SETOSA = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}
IRIS_VIRGINICA = {
    "sepal_length_cm": 7.7,
    "sepal_width_cm": 3.0,
    "petal_length_cm": 6.1,
    "petal_width_cm": 2.3,
}
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # when write_labelled's rows are aged from
DIABETES_ROW = {
    "age": 0.03,
    "sex": 0.05,
    "bmi": 0.06,
    "bp": 0.02,
    "s1": -0.04,
    "s2": -0.03,
    "s3": -0.02,
    "s4": 0.0,
    "s5": 0.02,
    "s6": 0.01,
}


def predict(client: TestClient, model: str, *rows: dict[str, Any]) -> Response:
    return client.post(f"/predict/{model}", json={"instances": list(rows)})


def prediction_ids(response: Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [p["id"] for p in response.json()["predictions"]]


def assert_error(response: Response, status: int, code: str) -> dict[str, Any]:
    """The response is an error in the one documented shape, with this status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def metric(client: Client, name: str, **labels: str) -> float:
    """The value of the one sample on /metrics with exactly these labels; fails if absent.
    ``client``: a TestClient, or an httpx2 client of a real server."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} on /metrics")


def metric_sum(client: Client, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` matching ``labels`` (like PromQL sum())."""
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def stored_rows(data_dir: Path) -> list[sqlite3.Row]:
    """Every row of the prediction log, read straight from the SQLite file."""
    with sqlite3.connect(data_dir / "steward.db") as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute("SELECT * FROM predictions ORDER BY created_at, id"))


def empty_store(data_dir: Path) -> None:
    """The SQLite store a server makes at start-up, with nothing in it: `steward retrain`
    reads a server's store and never makes one."""
    data_dir.mkdir(parents=True, exist_ok=True)
    open_store(f"sqlite:///{data_dir / 'steward.db'}").close()


def stored_shadow_rows(data_dir: Path) -> list[sqlite3.Row]:
    """Every shadow prediction of the log, read straight from the SQLite file."""
    with sqlite3.connect(data_dir / "steward.db") as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute("SELECT * FROM shadow_predictions ORDER BY created_at, id"))


def wait_until(condition: Callable[[], bool], seconds: float = 30, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds (True) or ``seconds`` have passed (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``steward ARGV`` in this process: exit status, stdout, stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *parts: str) -> None:
    """The CLI's error shape: one line ``steward: error: ...`` holding each of ``parts``."""
    assert err.startswith("steward: error: "), err
    assert err.count("\n") == 1, err
    assert err.endswith("\n"), err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err


def save_broken_iris(models_dir: Path) -> int:
    """A version of iris that passes every load check and fails its warm-up: its metadata
    names three of the four features its estimator was fitted on."""
    metadata = read_metadata(models_dir, "iris", 1)
    estimator = load_estimator(models_dir, metadata)
    draft = metadata.model_copy(update={"features": metadata.features[:3]})
    return save_version(models_dir, draft, estimator).version


# metadata.json as Steward wrote it before versions recorded their training data (commit 349ac99)
METADATA_BEFORE_TRAINING_DATA = """{
  "name": "line", "version": 1, "task": "regression",
  "features": [{"name": "x", "dtype": "float", "min": 0.0, "max": 10.0, "categories": null,
                "open_categories": false, "nullable": false}],
  "classes": null, "has_proba": false, "input_format": "array",
  "metrics": {"mae": 0.0, "rmse": 0.0, "r2": 1.0},
  "target_min": 0.0, "target_max": 20.0, "training_rows": 9, "sample_rows": 0,
  "sklearn_version": "1.9.1",
  "sha256": "d4c4405113b8d3200ec26b33fcd0a5ece802ba557874476f4d45d8f992266d33",
  "created_at": "2026-11-30T15:59:36.666394Z",
  "reference_profile": {"x": {
    "probabilities": [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0],
    "quantiles": [0.0, 0.08, 0.4, 0.8, 2.0, 5.0, 8.0, 9.2, 9.6, 9.92, 10.0],
    "frequencies": null}},
  "description": "Fitted before training_data existed."
}
"""


def write_labelled(
    store: PredictionStore,
    model: str,
    rows: Sequence[tuple[timedelta, dict[str, Any], Any]],
    version: int = 1,
) -> list[str]:
    """Served predictions made ``age`` before NOW with these inputs, each labelled with its
    ground truth (None: left unlabelled), as the log and the feedback path store them: for
    tests that need prediction times the real app cannot give."""
    records = [
        PredictionRecord(
            uuid.uuid4().hex,
            model,
            version,
            NOW - age,
            tuple(inputs),
            tuple(inputs.values()),
            "whatever",
        )
        for age, inputs, _ in rows
    ]
    store.write_predictions(records)
    labels = [
        Label(r.id, truth, None, None, NOW)
        for r, (_, _, truth) in zip(records, rows, strict=True)
        if truth is not None
    ]
    assert store.label(labels) == {label.prediction_id for label in labels}
    return [r.id for r in records]


def churn_frame(rows: int = 120) -> pd.DataFrame:
    """A churn table (plan, months, spend -> churned), the same rows at every call: basic-plan
    customers of under a year churn."""
    rng = np.random.default_rng(0)
    plan = rng.choice(["basic", "pro", "team"], size=rows)
    months = rng.integers(1, 48, size=rows)
    spend = rng.normal(50, 15, size=rows).round(2)
    churned = np.where((plan == "basic") & (months < 12), "yes", "no")
    return pd.DataFrame({"plan": plan, "months": months, "spend": spend, "churned": churned})


def plan_churn_csv(path: Path) -> Path:
    """A churn CSV of two features (plan, months -> churned): 120 rows, the same at every
    call; the recipe `steward train --csv` makes for it imputes, scales and one-hot encodes."""
    rng = np.random.default_rng(0)
    months = rng.integers(1, 48, size=120)
    plan = rng.choice(["basic", "pro", "team"], size=120)
    churned = np.where((plan == "basic") & (months < 12), "yes", "no")
    pd.DataFrame({"plan": plan, "months": months, "churned": churned}).to_csv(path, index=False)
    return path


POSTGRES = os.environ.get("STEWARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
# Set by .ci/run: without a PostgreSQL the tests that need one fail instead of skipping, so the
# PostgreSQL half of the suite can never pass by not running.
POSTGRES_REQUIRED = os.environ.get("STEWARD_TEST_POSTGRES_REQUIRED", "") not in ("", "0")


def postgres_dsn(database: str) -> str:
    """The psycopg URL of ``database`` on the test PostgreSQL."""
    return POSTGRES.rsplit("/", 1)[0] + f"/{database}"


def postgres_url(database: str) -> str:
    """The SQLAlchemy URL of ``database`` on the test PostgreSQL."""
    return _with_driver(postgres_dsn(database))


def _with_driver(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def postgres_admin() -> psycopg.Connection[Any]:
    """An autocommit connection to the test PostgreSQL (STEWARD_TEST_POSTGRES). Without one
    the test skips, or fails with one line when STEWARD_TEST_POSTGRES_REQUIRED is set."""
    try:
        return psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL at {POSTGRES}: {' '.join(str(exc).split())}"
    if POSTGRES_REQUIRED:  # out of the except block: the failure is this one line, unchained
        pytest.fail(f"{reason} (STEWARD_TEST_POSTGRES_REQUIRED is set)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A database of its own on the test PostgreSQL (``prefix`` and a random suffix), dropped
    afterwards with whatever is still connected to it; its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with postgres_admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield name
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A schema of its own in the test PostgreSQL's database, dropped afterwards with what is
    in it; a SQLAlchemy URL whose connections work in it (cheaper than a database a test)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with postgres_admin() as admin:
        admin.execute(f"CREATE SCHEMA {name}")
        try:
            yield f"{_with_driver(POSTGRES)}?options=-csearch_path%3D{name}"
        finally:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


@contextmanager
def postgres_store(prefix: str) -> Iterator[SqlStore]:
    """A new, empty store in a schema of its own on the test PostgreSQL; closed and dropped
    afterwards."""
    with postgres_schema(prefix) as url:
        opened = open_store(url)
        try:
            yield opened
        finally:
            opened.close()


def bind(source: Path, target: Path) -> None:
    """``source`` bind-mounted at ``target`` (skips the test where this machine mounts nothing)."""
    done = subprocess.run(["mount", "--bind", source, target], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` turned read-only by a read-only bind mount over itself, as a pod's read-only
    volume is (root cannot write through it; chmod would not stop root). Skips the test where
    this machine lets it mount nothing."""
    bind(folder, folder)
    try:
        remount = ["mount", "-o", "remount,ro,bind", str(folder)]
        assert subprocess.run(remount, capture_output=True).returncode == 0
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@contextmanager
def mounted(target: Path, *options: str) -> Iterator[None]:
    """A tmpfs at ``target`` (skips the test if this machine lets it mount none)."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(("size=16m", *options)), "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
