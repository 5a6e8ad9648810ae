"""/healthz, /readyz and the store-failure path: not ready, nothing lost, recovery."""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import (
    IRIS_SETOSA,
    assert_error,
    metric,
    predict,
    prediction_ids,
    stored_rows,
    wait_until,
)

from app.aliases import set_alias
from app.artifacts import ARTIFACT
from app.main import create_app
from app.services import Services
from app.settings import Settings
from app.training import train_demo


@contextmanager
def failing_store(data_dir: Path) -> Iterator[None]:
    """Make every write to the real SQLite file fail, from outside the service, then heal it."""
    with sqlite3.connect(data_dir / "steward.db") as conn:
        for table in ("predictions", "store_heartbeat"):
            conn.execute(
                f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'disk is failing'); END"
            )
    try:
        yield
    finally:
        with sqlite3.connect(data_dir / "steward.db") as conn:
            for table in ("predictions", "store_heartbeat"):
                conn.execute(f"DROP TRIGGER fail_{table}")


def store_errors(client: TestClient) -> float:
    """Failed writes of the prediction log (a store down), counted under no model."""
    return metric(client, "steward_errors_total", model="_unknown", stage="store")


def wait_ready(client: TestClient) -> None:
    ready = wait_until(lambda: client.get("/readyz").status_code == 200, seconds=10, interval=0.05)
    assert ready, client.get("/readyz").text


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_ready(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["models"] == {"breast-cancer": 1, "diabetes": 1, "iris": 1}


def tamper(settings: Settings, model: str) -> None:
    """Change a model's artifact after registration: its production version is refused."""
    artifact = settings.models_dir / model / "1" / ARTIFACT
    artifact.write_bytes(artifact.read_bytes()[:-10])


def test_a_refused_model_leaves_the_instance_ready_but_degraded(settings: Settings) -> None:
    tamper(settings, "breast-cancer")
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body == {
            "status": "degraded",
            "models": {"diabetes": 1, "iris": 1},
            "degraded": [
                {
                    "component": "model:breast-cancer",
                    "reason": "checksum_mismatch",
                    "message": body["degraded"][0]["message"],
                }
            ],
            "pending_log_rows": 0,
        }
        assert "checksum_mismatch" in body["degraded"][0]["message"]
        assert (
            metric(
                client, "steward_model_refused", model="breast-cancer", reason="checksum_mismatch"
            )
            == 1
        )
        assert predict(client, "iris", IRIS_SETOSA).status_code == 200
        response = client.post("/predict/breast-cancer", json={"instances": [{}]})
        assert_error(response, 503, "model_unavailable")
        models = {m["name"]: m for m in client.get("/models").json()}
        assert models["breast-cancer"]["serving"] is None
        assert "checksum_mismatch" in models["breast-cancer"]["refused"]


def test_a_version_refused_on_a_later_load_is_counted_and_production_still_serves(
    settings: Settings,
) -> None:
    """An older version, tampered, is refused when a request first asks for it: the metric
    says so at once; the model still serves its production version, so it is not degraded."""
    train_demo(settings.models_dir)
    for model in ("breast-cancer", "diabetes", "iris"):
        set_alias(settings.models_dir, model, "production", 2)
    tamper(settings, "iris")  # version 1
    with TestClient(create_app(settings)) as client:
        services: Services = client.app_state["services"]
        collectors = services.metrics.registry
        refused = {"model": "iris", "reason": "checksum_mismatch"}
        assert collectors.get_sample_value("steward_model_refused", refused) is None
        response = client.post("/predict/iris?version=1", json={"instances": [IRIS_SETOSA]})
        assert_error(response, 503, "model_unavailable")
        assert collectors.get_sample_value("steward_model_refused", refused) == 1
        assert client.get("/readyz").json()["status"] == "ready"
        iris = client.get("/models/iris").json()
        assert [(r["version"], r["reason"]) for r in iris["refusals"]] == [(1, "checksum_mismatch")]
        assert {m["name"]: m for m in client.get("/models").json()}["iris"]["refused"] is None
        assert predict(client, "iris", IRIS_SETOSA).json()["version"] == 2


def test_ready_with_every_model_serving_says_ready(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert (body["status"], body["degraded"], body["pending_log_rows"]) == ("ready", [], 0)


def test_a_required_model_that_is_refused_makes_it_not_ready(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tamper(settings, "breast-cancer")
    tamper(settings, "diabetes")
    monkeypatch.setenv("STEWARD_REQUIRED_MODELS", "iris, breast-cancer")
    required = Settings(models_dir=settings.models_dir, data_dir=settings.data_dir)
    assert required.required_models == ["iris", "breast-cancer"]
    with TestClient(create_app(required)) as client:
        error = assert_error(client.get("/readyz"), 503, "not_ready")
        assert error["message"] == "not ready: model:breast-cancer"
        assert [(d["component"], d["reason"]) for d in error["details"]] == [
            ("model:breast-cancer", "checksum_mismatch"),  # what blocks, first
            ("model:diabetes", "checksum_mismatch"),  # degraded, for the whole picture
        ]
        assert predict(client, "iris", IRIS_SETOSA).status_code == 200  # still serves


def test_a_required_model_that_is_absent_makes_it_not_ready(settings: Settings) -> None:
    required = Settings(
        models_dir=settings.models_dir, data_dir=settings.data_dir, required_models=["churn"]
    )
    with TestClient(create_app(required)) as client:
        error = assert_error(client.get("/readyz"), 503, "not_ready")
        assert error["details"] == [
            {
                "component": "model:churn",
                "reason": "absent",
                "message": "required model churn is not in the registry",
            }
        ]


def test_no_model_serving_is_not_ready(settings: Settings) -> None:
    for model in ("breast-cancer", "diabetes", "iris"):
        tamper(settings, model)
    with TestClient(create_app(settings)) as client:
        error = assert_error(client.get("/readyz"), 503, "not_ready")
        assert error["message"] == "not ready: models"
        assert [(d["component"], d["reason"]) for d in error["details"]] == [
            ("models", "none_serving"),
            ("model:breast-cancer", "checksum_mismatch"),
            ("model:diabetes", "checksum_mismatch"),
            ("model:iris", "checksum_mismatch"),
        ]


def test_a_row_the_store_refuses_is_quarantined_and_the_instance_stays_ready(
    settings: Settings,
) -> None:
    """The database refuses one logged row (a trigger on one input value, as a constraint
    could): the rows before and after it are written, feedback for them works at once, the
    refused one is kept in prediction_quarantine, and /readyz stays 200."""
    refused = {**IRIS_SETOSA, "sepal_length_cm": 6.66}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        with sqlite3.connect(settings.data_dir / "steward.db") as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON predictions "
                "WHEN json_extract(NEW.inputs, '$.sepal_length_cm') = 6.66 "
                "BEGIN SELECT RAISE(ABORT, 'refused by a constraint'); END"
            )
        before = prediction_ids(predict(client, "iris", IRIS_SETOSA))
        (bad,) = prediction_ids(predict(client, "iris", refused))
        after = prediction_ids(predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA))
        accepted = client.post(
            "/feedback", json={"prediction_id": after[1], "ground_truth": "setosa"}
        )
        assert accepted.status_code == 200, accepted.text
        unknown = client.post("/feedback", json={"prediction_id": bad, "ground_truth": "setosa"})
        assert_error(unknown, 404, "unknown_prediction")
        response = client.get("/readyz")
        assert response.status_code == 200, response.text
        assert (response.json()["status"], response.json()["pending_log_rows"]) == ("ready", 0)
        assert metric(client, "steward_prediction_log_rejected_rows_total") == 1
        assert metric(client, "steward_prediction_log_written_rows_total") == 3
        assert metric(client, "steward_errors_total", model="_unknown", stage="store") == 0
    assert sorted(r["id"] for r in stored_rows(settings.data_dir)) == sorted(before + after)
    with sqlite3.connect(settings.data_dir / "steward.db") as conn:
        kept = conn.execute(
            "SELECT id, model, version, reason FROM prediction_quarantine"
        ).fetchall()
    assert kept == [
        (
            bad,
            "iris",
            1,
            "RowsRefused: prediction store failed to write predictions: refused by a constraint",
        )
    ]


def test_failing_store_is_not_ready_and_loses_nothing(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        before = prediction_ids(predict(client, "iris", IRIS_SETOSA))
        wait_ready(client)
        # Written within the log's flush interval, before the store fails.
        assert wait_until(lambda: metric(client, "steward_prediction_log_pending_rows") == 0)
        with failing_store(settings.data_dir):
            during = prediction_ids(predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA))
            error = assert_error(client.get("/readyz"), 503, "not_ready")
            assert {d["component"] for d in error["details"]} == {"store"}
            assert "disk is failing" in str(error["details"])
            assert metric(client, "steward_prediction_log_pending_rows") == 2
            # The writer tries once its flush interval is over, fails, and keeps the rows.
            assert wait_until(lambda: store_errors(client) >= 1, seconds=10)
        wait_ready(client)  # healed: the kept batch is written
        assert metric(client, "steward_prediction_log_pending_rows") == 0
        assert (
            client.post(
                "/feedback", json={"prediction_id": during[0], "ground_truth": "setosa"}
            ).json()["status"]
            == "accepted"
        )
    assert sorted(r["id"] for r in stored_rows(settings.data_dir)) == sorted(before + during)


def test_store_backlog_beyond_the_limit_is_refused_not_lost(
    tmp_path: Path, models_dir: Path
) -> None:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "d", log_max_pending=3)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        with failing_store(settings.data_dir):
            accepted = prediction_ids(predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA))
            response = predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA)
            assert_error(response, 503, "store_unavailable")
            assert metric(client, "steward_errors_total", model="iris", stage="store") == 1
        wait_ready(client)
    assert sorted(r["id"] for r in stored_rows(settings.data_dir)) == sorted(accepted)


def test_a_store_failure_answering_feedback_is_503_counted_as_store(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        (pid,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
        with sqlite3.connect(settings.data_dir / "steward.db") as conn:  # inserts still work
            conn.execute(
                "CREATE TRIGGER fail_labels BEFORE UPDATE ON predictions "
                "BEGIN SELECT RAISE(ABORT, 'disk is failing'); END"
            )
        response = client.post("/feedback", json={"prediction_id": pid, "ground_truth": "setosa"})
        assert_error(response, 503, "store_unavailable")
        assert metric(client, "steward_errors_total", model="_unknown", stage="store") == 1
        assert metric(client, "steward_errors_total", model="iris", stage="store") == 0
