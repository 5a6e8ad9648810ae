"""One contract for every store backend (SQLite file, real PostgreSQL), and the log writer."""

import asyncio
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from helpers import wait_until
from prometheus_client import CollectorRegistry

from app.errors import StoreUnavailable
from app.metrics import Metrics
from app.store import Label, PredictionLog, PredictionRecord, SqlStore, open_store

POSTGRES = os.environ.get("STEWARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'store.db'}")
        yield opened
        opened.close()
        return
    schema = f"steward_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {exc}")
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        url = POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1)
        opened = open_store(f"{url}?options=-csearch_path%3D{schema}")
        try:
            yield opened
        finally:
            opened.close()
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def record(model: str = "iris", **output: object) -> PredictionRecord:
    return PredictionRecord(
        id=uuid.uuid4().hex,
        model=model,
        version=1,
        created_at=datetime.now(UTC),
        inputs={"a": 1.5, "colour": "red", "note": "ünïcode"},
        output={"prediction": "setosa", **output},
    )


def label(prediction_id: str, truth: object, correct: bool | None = True) -> Label:
    return Label(prediction_id, truth, correct, None, datetime.now(UTC))


def fail_inserts(sqlite_path: Path) -> None:
    """Make every insert into the real SQLite file fail, from outside (DROP TRIGGER fail heals)."""
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON predictions "
            "BEGIN SELECT RAISE(ABORT, 'disk is failing'); END"
        )


def test_written_rows_read_back(store: SqlStore) -> None:
    rows = [record(), record(probabilities={"setosa": 0.9, "virginica": 0.1})]
    store.write_predictions(rows)
    found = store.get_predictions([r.id for r in rows] + ["unknown"])
    assert set(found) == {r.id for r in rows}
    for row in rows:
        stored = found[row.id]
        assert (stored.model, stored.version) == (row.model, row.version)
        assert stored.inputs == row.inputs
        assert stored.output == row.output
        assert abs((stored.created_at - row.created_at).total_seconds()) < 1e-3
        assert stored.ground_truth is None
        assert stored.feedback_at is None


def test_empty_calls(store: SqlStore) -> None:
    store.write_predictions([])
    assert store.get_predictions([]) == {}
    assert store.label([]) == set()


@pytest.mark.parametrize("truth", ["setosa", 1, 2.5, 100.0])
def test_label_keeps_the_ground_truth_type(store: SqlStore, truth: object) -> None:
    row = record()
    store.write_predictions([row])
    assert store.label([Label(row.id, truth, None, 0.25, datetime.now(UTC))]) == {row.id}
    stored = store.get_predictions([row.id])[row.id]
    assert stored.ground_truth == truth
    assert type(stored.ground_truth) is type(truth)
    assert stored.abs_error == 0.25
    assert stored.feedback_at is not None


def test_a_prediction_is_labelled_once(store: SqlStore) -> None:
    row = record()
    store.write_predictions([row])
    assert store.label([label(row.id, "setosa")]) == {row.id}
    assert store.label([label(row.id, "virginica", False)]) == set()
    stored = store.get_predictions([row.id])[row.id]
    assert (stored.ground_truth, stored.correct) == ("setosa", True)


def test_concurrent_labels_label_once(store: SqlStore) -> None:
    row = record()
    store.write_predictions([row])
    results: list[set[str]] = []
    threads = [
        threading.Thread(target=lambda t=t: results.append(store.label([label(row.id, t)])))
        for t in ("setosa", "virginica", "versicolor", "setosa")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]


def test_unknown_ids_are_not_labelled(store: SqlStore) -> None:
    assert store.label([label("nope", "setosa")]) == set()


def test_duplicate_ids_are_refused_whole(store: SqlStore) -> None:
    row = record()
    store.write_predictions([row])
    with pytest.raises(StoreUnavailable):
        store.write_predictions([record(), row])
    assert len(store.get_predictions([row.id])) == 1


def test_check_writable(store: SqlStore) -> None:
    store.check_writable()
    store.check_writable()


# --- the log writer, on a real SQLite store ----------------------------------------------


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


@pytest.fixture
def log(sqlite_path: Path) -> Iterator[PredictionLog]:
    writer = PredictionLog(
        open_store(f"sqlite:///{sqlite_path}"),
        Metrics(CollectorRegistry()),
        batch_size=100,
        max_pending=1000,
    )
    writer.start()
    yield writer
    writer.close(5)


def count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        total: int = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    return total


def test_log_writes_everything_in_batches(log: PredictionLog, sqlite_path: Path) -> None:
    rows = [record() for _ in range(950)]
    for start in range(0, 950, 50):
        log.append(rows[start : start + 50])
    log.flush()
    assert count(sqlite_path) == 950
    assert log.pending == 0
    assert log.metrics.log_written._value.get() == 950


def test_log_close_drains(log: PredictionLog, sqlite_path: Path) -> None:
    log.append([record() for _ in range(300)])
    log.close(5)
    assert count(sqlite_path) == 300
    with pytest.raises(StoreUnavailable, match="shutting down"):
        log.append([record()])


def test_log_refuses_beyond_max_pending_while_the_store_fails(
    log: PredictionLog, sqlite_path: Path
) -> None:
    fail_inserts(sqlite_path)
    kept = [record() for _ in range(1000)]
    log.append(kept)
    with pytest.raises(StoreUnavailable, match="behind by 1000 rows"):
        log.append([record()])
    with pytest.raises(StoreUnavailable):
        log.flush(timeout=0.2)
    assert log.last_error is not None
    assert "disk is failing" in log.last_error
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute("DROP TRIGGER fail")
    log.flush(timeout=10)
    assert count(sqlite_path) == 1000
    assert log.last_error is None


def test_a_full_log_whose_store_is_only_behind_makes_put_wait(
    log: PredictionLog, sqlite_path: Path
) -> None:
    """Another process holds SQLite's write lock: the writer waits (no error), the log fills,
    and ``put`` waits for room instead of refusing; once the lock goes, everything is written."""
    blocker = sqlite3.connect(sqlite_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    log.append([record() for _ in range(1000)])  # full: max_pending is 1000
    with pytest.raises(StoreUnavailable, match="behind by 1000 rows"):
        log.append([record()])
    late = [record() for _ in range(10)]

    async def put_then_release() -> None:
        waiting = asyncio.ensure_future(log.put(late, wait=30))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # waiting for room, not refused
        blocker.execute("ROLLBACK")
        await waiting

    asyncio.run(put_then_release())
    blocker.close()
    log.flush(timeout=10)
    assert count(sqlite_path) == 1010
    assert log.last_error is None


def test_a_full_log_whose_store_fails_refuses_put_at_once(
    log: PredictionLog, sqlite_path: Path
) -> None:
    fail_inserts(sqlite_path)
    log.append([record() for _ in range(1000)])
    assert wait_until(lambda: log.last_error is not None, seconds=10, interval=0.01)
    with pytest.raises(StoreUnavailable, match="disk is failing"):
        asyncio.run(log.put([record()], wait=3600))


def test_flush_if_pending_returns_with_its_rows_written(
    log: PredictionLog, sqlite_path: Path
) -> None:
    """What feedback relies on: once it returns, the named rows can be read from the store."""
    rows = [record() for _ in range(550)]
    for start in range(0, 550, 50):
        log.append(rows[start : start + 50])
    log.flush_if_pending([rows[120].id], timeout=10)
    assert set(log.store.get_predictions([r.id for r in rows[:121]])) == {r.id for r in rows[:121]}
    log.flush_if_pending(["never-appended"], timeout=0)  # nothing to wait for: returns


def test_ids_of_several_requests_in_one_write(store: SqlStore) -> None:
    """Many rows (more than one multi-row statement), two timestamps: all stored as sent."""
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    rows = [record()._replace(created_at=early if i < 6000 else late) for i in range(7000)]
    store.write_predictions(rows)
    stored = store.get_predictions([r.id for r in rows])
    assert len(stored) == 7000
    for row in rows[5990:6010]:
        got = stored[row.id]
        assert (got.created_at, got.inputs, got.output) == (row.created_at, row.inputs, row.output)
