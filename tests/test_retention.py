"""Prediction-log retention: by age and by row count, in bounded batches, shadow and quarantined
rows with their predictions, on SQLite and PostgreSQL, and in a real server."""

import asyncio
import os
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from helpers import IRIS_SETOSA, wait_until
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from server import STEWARD, free_port, serving
from sqlalchemy import select

from app.metrics import Metrics
from app.settings import Settings
from app.store import Label, PredictionRecord, QuarantinedPrediction, SqlStore, open_store
from app.store.retention import Retention
from app.store.schema import predictions, quarantine, shadow_predictions

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0


def retention(store: SqlStore, tmp_path: Path, **settings: object) -> tuple[Retention, Metrics]:
    metrics = Metrics(CollectorRegistry())
    configured = Settings(models_dir=tmp_path, data_dir=tmp_path, **settings)  # type: ignore[arg-type]
    return Retention(configured, store, metrics), metrics


def deleted(metrics: Metrics, table: str) -> float | None:
    return metrics.registry.get_sample_value(
        "steward_retention_deleted_rows_total", {"table": table}
    )


def served(age_days: float, n: int = 0) -> PredictionRecord:
    """A served iris prediction made ``age_days`` before NOW (``n`` orders rows of one age)."""
    return PredictionRecord(
        id=uuid.uuid4().hex,
        model="iris",
        version=1,
        created_at=NOW - timedelta(days=age_days, microseconds=n),
        names=("a",),
        row=(1.0,),
        prediction="setosa",
    )


def shadow_of(row: PredictionRecord) -> PredictionRecord:
    return row._replace(id=uuid.uuid4().hex, version=2, shadow_of=row.id)


def ids(store: SqlStore, table: str = "predictions") -> set[str]:
    source = {"predictions": predictions, "shadow_predictions": shadow_predictions}[table]
    with store.engine.connect() as conn:
        return set(conn.execute(select(source.c.id)).scalars())


def test_age_deletes_older_rows_with_their_shadows_and_labels(
    store: SqlStore, tmp_path: Path
) -> None:
    old = [served(30 + n) for n in range(5)]
    young = [served(1), served(8)]
    old_shadows = [shadow_of(row) for row in old[:3]]
    young_shadow = shadow_of(young[0])
    store.write_predictions([*old, *young, *old_shadows, young_shadow])
    labelled = store.label(
        [Label(old[0].id, "setosa", True, None, NOW), Label(young[1].id, "setosa", True, None, NOW)]
    )
    assert labelled == {old[0].id, young[1].id}
    store.quarantine(
        QuarantinedPrediction(
            "q-old", "iris", 1, NOW - timedelta(days=40), "r", "row", NOW - timedelta(days=40)
        )
    )
    store.quarantine(
        QuarantinedPrediction("q-new", "iris", 1, NOW, "r", "row", NOW - timedelta(days=1))
    )

    keeper, metrics = retention(store, tmp_path, retention_seconds=10 * DAY, retention_batch_size=2)
    done = keeper.run_pass(now=NOW)

    assert ids(store) == {row.id for row in young}
    assert ids(store, "shadow_predictions") == {young_shadow.id}
    with store.engine.connect() as conn:
        assert list(conn.execute(select(quarantine.c.id)).scalars()) == ["q-new"]
    assert done.deleted == {
        "predictions": 5,
        "shadow_predictions": 3,
        "prediction_quarantine": 1,
    }
    assert done.batches == 4  # 2 + 2 + 1 predictions, 1 quarantined row
    assert deleted(metrics, "predictions") == 5
    assert deleted(metrics, "shadow_predictions") == 3
    assert deleted(metrics, "prediction_quarantine") == 1
    # the kept labelled row still labelled; a second pass has nothing left to do
    assert store.get_predictions([young[1].id])[young[1].id].correct is True
    again = keeper.run_pass(now=NOW)
    assert again.deleted == {"predictions": 0, "shadow_predictions": 0, "prediction_quarantine": 0}
    assert deleted(metrics, "predictions") == 5


def quarantine_old(store: SqlStore, n: int) -> None:
    for i in range(n):
        at = NOW - timedelta(days=40, seconds=i)
        store.quarantine(QuarantinedPrediction(f"q-{i}", "iris", 1, at, "r", "row", at))


def test_quarantined_rows_go_in_counted_batches(store: SqlStore, tmp_path: Path) -> None:
    quarantine_old(store, 25)
    keeper, metrics = retention(
        store, tmp_path, retention_seconds=10 * DAY, retention_batch_size=10
    )
    done = keeper.run_pass(now=NOW)
    assert done.deleted["prediction_quarantine"] == 25
    assert done.batches == 3  # 10 + 10 + 5 rows, each its own transaction
    assert deleted(metrics, "prediction_quarantine") == 25


def test_closing_stops_a_quarantine_pass_between_batches(store: SqlStore, tmp_path: Path) -> None:
    """The quarantine's deletion takes the same turns as the predictions': one batch, then the
    writer's turn, and the server's close stops it there."""
    quarantine_old(store, 400)
    keeper, _ = retention(store, tmp_path, retention_seconds=10 * DAY, retention_batch_size=1)

    def left() -> int:
        with store.engine.connect() as conn:
            return len(conn.execute(select(quarantine.c.id)).all())

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(keeper.run_pass, NOW)
        assert wait_until(lambda: left() < 400, seconds=60, interval=0.005)
        asyncio.run(keeper.close())
        done = running.result(timeout=60)
    assert done.stopped
    remaining = left()
    assert remaining > 0
    assert done.deleted["prediction_quarantine"] == 400 - remaining
    assert done.batches == 400 - remaining


def test_row_count_keeps_the_newest_rows(store: SqlStore, tmp_path: Path) -> None:
    rows = [served(0, n) for n in range(10)]  # rows[0] is the newest
    shadows = [shadow_of(row) for row in rows]
    store.write_predictions([*rows, *shadows])

    keeper, metrics = retention(store, tmp_path, retention_max_rows=4, retention_batch_size=4)
    done = keeper.run_pass(now=NOW)

    assert ids(store) == {row.id for row in rows[:4]}
    assert ids(store, "shadow_predictions") == {row.id for row in shadows[:4]}
    assert done.batches == 2  # 4 + 2 rows
    assert deleted(metrics, "predictions") == 6
    assert deleted(metrics, "shadow_predictions") == 6
    assert deleted(metrics, "prediction_quarantine") == 0


def test_replicas_applying_the_row_count_at_once_keep_the_newest_rows(
    store: SqlStore, tmp_path: Path
) -> None:
    """Two servers on one store (each its own engine), passes at the same time: each deletes
    what is older than the newest kept row, so together they delete no more than one would."""
    rows = [served(0, n) for n in range(50)]
    store.write_predictions(rows)
    other = open_store(store.engine.url.render_as_string(hide_password=False))
    try:
        keepers = [
            retention(s, tmp_path, retention_max_rows=7, retention_batch_size=3)
            for s in (store, other)
        ]
        with ThreadPoolExecutor(2) as pool:
            passes = list(pool.map(lambda k: k[0].run_pass(now=NOW), keepers))
    finally:
        other.close()
    assert ids(store) == {row.id for row in rows[:7]}
    assert sum(p.deleted["predictions"] for p in passes) == 43
    assert sum(deleted(m, "predictions") or 0 for _, m in keepers) == 43


def test_age_and_row_count_together(store: SqlStore, tmp_path: Path) -> None:
    rows = [served(n) for n in range(0, 20, 2)]  # 0, 2, ... 18 days old
    store.write_predictions(rows)
    keeper, metrics = retention(store, tmp_path, retention_seconds=9 * DAY, retention_max_rows=3)
    keeper.run_pass(now=NOW)
    assert ids(store) == {row.id for row in rows[:3]}  # the age kept 5, the count 3 of them
    assert deleted(metrics, "predictions") == 7


def test_retention_off_deletes_nothing(store: SqlStore, tmp_path: Path) -> None:
    rows = [served(400)]
    store.write_predictions(rows)
    keeper, _ = retention(store, tmp_path)
    assert not keeper.enabled
    keeper.run_pass(now=NOW)
    assert ids(store) == {rows[0].id}


def test_retention_shorter_than_the_quality_window_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="STEWARD_RETENTION_SECONDS must be at least"):
        Settings(models_dir=tmp_path, retention_seconds=DAY, quality_window_seconds=2 * DAY)


@pytest.mark.parametrize(
    "setting", [{"retention_seconds": 0}, {"retention_max_rows": 0}, {"retention_batch_size": 0}]
)
def test_retention_settings_refuse_non_positive_values(
    tmp_path: Path, setting: dict[str, int]
) -> None:
    with pytest.raises(ValidationError):
        Settings(models_dir=tmp_path, **setting)  # type: ignore[arg-type]


def scrape(url: str, name: str, labels: dict[str, str]) -> float | None:
    text = httpx2.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def test_a_real_server_keeps_only_the_newest_rows(tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(data),
        "STEWARD_RETENTION_MAX_ROWS": "5",
        "STEWARD_RETENTION_INTERVAL_SECONDS": "0.2",
        "STEWARD_RETENTION_BATCH_SIZE": "4",
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=tmp_path / "server.log", ready="/readyz") as server:
        answered = []
        with httpx2.Client(base_url=server.url, timeout=10) as http:
            for _ in range(20):
                response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
                assert response.status_code == 200, response.text
                answered.append(response.json()["predictions"][0]["id"])

        def stored() -> list[str]:
            with sqlite3.connect(data / "steward.db") as conn:
                query = "SELECT id FROM predictions ORDER BY created_at"
                return [row[0] for row in conn.execute(query)]

        labels = {"table": "predictions"}
        name = "steward_retention_deleted_rows_total"
        assert wait_until(lambda: scrape(server.url, name, labels) == 15), stored()
        assert stored() == answered[-5:]
        assert scrape(server.url, name, {"table": "shadow_predictions"}) == 0
