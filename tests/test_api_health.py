"""/healthz, /readyz and the store-failure path: not ready, nothing lost, recovery."""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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

from app.artifacts import ARTIFACT
from app.main import create_app
from app.settings import Settings


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


def wait_ready(client: TestClient) -> None:
    ready = wait_until(lambda: client.get("/readyz").status_code == 200, seconds=10, interval=0.05)
    assert ready, client.get("/readyz").text


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_ready(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["models"] == {"breast-cancer": 1, "diabetes": 1, "iris": 1}


def test_refused_model_makes_it_not_ready(settings: Settings) -> None:
    artifact = settings.models_dir / "breast-cancer" / "1" / ARTIFACT
    artifact.write_bytes(artifact.read_bytes()[:-10])
    with TestClient(create_app(settings)) as client:
        error = assert_error(client.get("/readyz"), 503, "not_ready")
        assert error["details"] == [
            {
                "component": "model:breast-cancer",
                "reason": "checksum_mismatch",
                "message": error["details"][0]["message"],
            }
        ]
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


def test_failing_store_is_not_ready_and_loses_nothing(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        before = prediction_ids(predict(client, "iris", IRIS_SETOSA))
        wait_ready(client)
        with failing_store(settings.data_dir):
            during = prediction_ids(predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA))
            error = assert_error(client.get("/readyz"), 503, "not_ready")
            assert {d["component"] for d in error["details"]} == {"store"}
            assert "disk is failing" in str(error["details"])
            assert metric(client, "steward_prediction_log_pending_rows") == 2
        wait_ready(client)  # healed: the kept batch is written
        assert metric(client, "steward_prediction_log_pending_rows") == 0
        assert metric(client, "steward_errors_total", model="_unknown", stage="store") >= 1
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
