"""One contract for every store backend (SQLite file, real PostgreSQL), and the log writer."""

import asyncio
import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import postgres_store, wait_until
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Text, cast, create_engine, inspect, select, text, update

from app.errors import StoreUnavailable
from app.metrics import Metrics
from app.store import (
    Label,
    PairedCounts,
    PredictionLog,
    PredictionRecord,
    QuarantinedPrediction,
    RowsRefused,
    SqlStore,
    StoredShadow,
    VersionCounts,
    open_store,
)
from app.store.queries import labelled_rows_query, paired_counts_query, version_counts_query
from app.store.schema import predictions, quarantine, shadow_predictions

SETOSA = {"prediction": "setosa"}  # the output column of record()


NAMES = ("a", "colour", "note")
INPUTS = {"a": 1.5, "colour": "red", "note": "ünïcode"}  # the inputs column of record()


def record(model: str = "iris", probabilities: dict[str, float] | None = None) -> PredictionRecord:
    return PredictionRecord(
        id=uuid.uuid4().hex,
        model=model,
        version=1,
        created_at=datetime.now(UTC),
        names=NAMES,
        row=(1.5, "red", "ünïcode"),
        prediction="setosa",
        probabilities=probabilities,
    )


def label(prediction_id: str, truth: object, correct: bool | None = True) -> Label:
    return Label(prediction_id, truth, correct, None, datetime.now(UTC))


def fail_every_insert(store: SqlStore) -> None:
    """The store's disk fails: every insert into predictions is refused, from outside."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER fail BEFORE INSERT ON predictions "
                    "BEGIN SELECT RAISE(ABORT, 'disk is failing'); END"
                )
            )
            return
        conn.execute(
            text(
                "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk is failing'; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER fail BEFORE INSERT ON predictions "
                "FOR EACH ROW EXECUTE FUNCTION fail()"
            )
        )


def heal(store: SqlStore) -> None:
    on = "" if store.engine.dialect.name == "sqlite" else " ON predictions"
    with store.engine.begin() as conn:
        conn.execute(text(f"DROP TRIGGER fail{on}"))


def test_written_rows_read_back(store: SqlStore) -> None:
    rows = [record(), record(probabilities={"setosa": 0.9, "virginica": 0.1})]
    store.write_predictions(rows)
    found = store.get_predictions([r.id for r in rows] + ["unknown"])
    assert set(found) == {r.id for r in rows}
    assert found[rows[0].id].output == {"prediction": "setosa"}
    assert found[rows[1].id].output == {
        "prediction": "setosa",
        "probabilities": {"setosa": 0.9, "virginica": 0.1},
    }
    for row in rows:
        stored = found[row.id]
        assert (stored.model, stored.version) == (row.model, row.version)
        assert stored.inputs == INPUTS
        assert abs((stored.created_at - row.created_at).total_seconds()) < 1e-3
        assert stored.ground_truth is None
        assert stored.feedback_at is None


def test_json_columns_are_stored_as_compact_json_in_feature_order(store: SqlStore) -> None:
    """The exact text of the JSON columns: what the log has always written, now made from the
    record's pieces in the writer thread (PostgreSQL's json type keeps the text as given)."""
    day = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    names = ("b", "a", "day", "n", "flag", "missing")
    row = record()._replace(
        names=names, row=(2.5, "red", day, 3, True, None), probabilities={"x": 0.75, "1": 0.25}
    )
    value = record()._replace(names=names[:1], row=(1.0,), prediction=151.25)
    store.write_predictions([row, value])
    p = predictions.c
    query = select(p.id, cast(p.inputs, Text), cast(p.output, Text))
    with store.engine.connect() as conn:
        stored = {r[0]: f"{r[1]} {r[2]}" for r in conn.execute(query)}
    assert stored == {
        row.id: '{"b":2.5,"a":"red","day":"2026-05-01T12:30:00+00:00","n":3,"flag":true,'
        '"missing":null} {"prediction":"setosa","probabilities":{"x":0.75,"1":0.25}}',
        value.id: '{"b":1.0} {"prediction":151.25}',
    }


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


def test_a_label_waiting_on_another_replicas_label_of_the_row_changes_nothing(
    store: SqlStore,
) -> None:
    """Another replica labels the row in a transaction still open: this one's UPDATE waits for
    its row lock (PostgreSQL; the file's write lock on SQLite), then checks ``ground_truth IS
    NULL`` again on the row as committed, and labels nothing."""
    row = record()
    store.write_predictions([row])
    other = create_engine(store.engine.url)
    results: list[set[str]] = []
    try:
        with other.connect() as replica:
            replica.execute(
                update(predictions)
                .where(predictions.c.id == row.id, predictions.c.ground_truth.is_(None))
                .values(ground_truth='"virginica"', correct=False, feedback_at=datetime.now(UTC))
            )
            waiting = threading.Thread(
                target=lambda: results.append(store.label([label(row.id, "setosa")]))
            )
            waiting.start()
            if store.engine.dialect.name == "postgresql":
                assert wait_until(lambda: lock_waits(replica) == 1, seconds=30)
            replica.commit()
            waiting.join(timeout=60)
    finally:
        other.dispose()
    assert results == [set()]
    stored = store.get_predictions([row.id])[row.id]
    assert (stored.ground_truth, stored.correct) == ("virginica", False)


def lock_waits(conn: Connection) -> int:
    """Backends of this database waiting for a lock (PostgreSQL)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return int(conn.execute(query).scalar_one())


def test_batches_naming_the_same_ids_in_opposite_orders_label_each_once(
    store: SqlStore,
) -> None:
    """Two replicas' feedback batches over the same rows, one in reverse: rows are locked in
    one order, so neither waits for the other in a cycle (PostgreSQL would abort one)."""
    for _ in range(10):
        rows = [record() for _ in range(50)]
        store.write_predictions(rows)
        ids = [r.id for r in rows]
        results: list[set[str]] = []
        threads = [
            threading.Thread(
                target=lambda order=order, into=results: into.append(
                    store.label([label(i, "setosa") for i in order])
                )
            )
            for order in (ids, ids[::-1])
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 2
        assert results[0] | results[1] == set(ids)
        assert results[0] & results[1] == set()


def test_unknown_ids_are_not_labelled(store: SqlStore) -> None:
    assert store.label([label("nope", "setosa")]) == set()


def test_duplicate_ids_are_refused_whole(store: SqlStore) -> None:
    row = record()
    store.write_predictions([row])
    with pytest.raises(StoreUnavailable):
        store.write_predictions([record(), row])
    assert len(store.get_predictions([row.id])) == 1


# --- live quality: per-version counts in a window -----------------------------------------

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
WEEK_AGO = NOW - timedelta(days=7)


def scored(
    model: str, version: int, age: timedelta, correct: bool | None, error: float | None
) -> tuple[PredictionRecord, Label | None]:
    """A prediction made ``age`` before NOW and, unless both are None, its label."""
    row = record(model)._replace(version=version, created_at=NOW - age)
    if correct is None and error is None:
        return row, None
    return row, Label(row.id, "truth", correct, error, NOW)


def write_scored(store: SqlStore, items: list[tuple[PredictionRecord, Label | None]]) -> None:
    store.write_predictions([row for row, _ in items])
    labels = [item for _, item in items if item is not None]
    assert store.label(labels) == {item.prediction_id for item in labels}


def test_version_counts_per_version_in_the_window(store: SqlStore) -> None:
    second, hour, day = timedelta(seconds=1), timedelta(hours=1), timedelta(days=1)
    write_scored(
        store,
        [
            # iris v1: 4 in the window, 3 labelled (2 right); 1 more, labelled wrong, 8 days old
            scored("iris", 1, hour, True, None),
            scored("iris", 1, day, True, None),
            scored("iris", 1, 2 * day, False, None),
            scored("iris", 1, hour, None, None),
            scored("iris", 1, 8 * day, False, None),
            # iris v2: 2 in the window, none labelled
            scored("iris", 2, hour, None, None),
            scored("iris", 2, 6 * day, None, None),
            # another model: never counted for iris
            scored("other", 1, hour, True, None),
            # a regressor: errors 1, 3 and one unlabelled in the window; error 100 out of it
            scored("diabetes", 1, hour, None, 1.0),
            scored("diabetes", 1, hour, None, 3.0),
            scored("diabetes", 1, hour, None, None),
            scored("diabetes", 1, 30 * day, None, 100.0),
        ],
    )
    assert store.version_counts("iris", WEEK_AGO) == [
        VersionCounts(1, predictions=4, labelled=3, correct=2, abs_error_sum=0.0,
                      squared_error_sum=0.0),
        VersionCounts(2, predictions=2, labelled=0, correct=0, abs_error_sum=0.0,
                      squared_error_sum=0.0),
    ]  # fmt: skip
    assert store.version_counts("iris", None)[0] == VersionCounts(1, 5, 4, 2, 0.0, 0.0)
    assert store.version_counts("diabetes", WEEK_AGO) == [VersionCounts(1, 3, 2, 0, 4.0, 10.0)]
    assert store.version_counts("diabetes", None) == [VersionCounts(1, 4, 3, 0, 104.0, 10_010.0)]
    # the window's start is inclusive, and a start in any zone is the same instant
    two_days_ago = NOW - 2 * day
    eastern = two_days_ago.astimezone(timezone(timedelta(hours=-5)))
    for since, predicted in ((two_days_ago, 4), (eastern, 4), (two_days_ago + second, 3)):
        assert store.version_counts("iris", since)[0].predictions == predicted, since
    assert store.version_counts("nope", None) == []
    assert store.version_counts("iris", NOW + hour) == []


def test_version_counts_until_end_before_it(store: SqlStore) -> None:
    """A window with an end (the version before a promote, over its time in production: app/
    auto_rollback.py): rows made before ``until`` only, the end exclusive, shadow rows too."""
    hour, second = timedelta(hours=1), timedelta(seconds=1)
    write_scored(
        store,
        [
            scored("iris", 1, 3 * hour, True, None),
            scored("iris", 1, 2 * hour, False, None),
            scored("iris", 1, 2 * hour, None, None),
            scored("iris", 1, hour, False, None),  # at the end: out
            scored("iris", 2, hour - second, True, None),  # after it: out
            scored("diabetes", 1, 2 * hour, None, 2.0),
            scored("diabetes", 1, hour, None, 50.0),
        ],
    )
    served = record()._replace(version=2, created_at=NOW - 2 * hour)
    store.write_predictions([served, shadow(served, version=1)])
    end = NOW - hour
    assert store.version_counts("iris", WEEK_AGO, end) == [
        VersionCounts(1, 3, 2, 1, 0.0, 0.0),
        VersionCounts(1, 1, 0, 0, 0.0, 0.0, shadow=True),
        VersionCounts(2, 1, 0, 0, 0.0, 0.0),
    ]
    assert store.version_counts("iris", None, end) == store.version_counts("iris", WEEK_AGO, end)
    assert store.version_counts("diabetes", None, end) == [VersionCounts(1, 1, 1, 0, 2.0, 4.0)]
    # an end in another zone is the same instant; one second later takes the row at the end in
    eastern = end.astimezone(timezone(timedelta(hours=-5)))
    assert store.version_counts("iris", None, eastern)[0].predictions == 3
    assert store.version_counts("iris", None, end + second)[0].predictions == 4
    assert store.version_counts("iris", None, NOW - 4 * hour) == []
    assert store.version_counts("iris", NOW - hour, None)[0] == VersionCounts(1, 1, 1, 0, 0.0, 0.0)


def test_version_counts_of_errors_large_but_finite(store: SqlStore) -> None:
    """Each error at most 1e100 (app/ground_truth.py): their squares sum to a finite number."""
    write_scored(store, [scored("diabetes", 1, timedelta(0), None, 1e100) for _ in range(3)])
    (counts,) = store.version_counts("diabetes", None)
    assert counts.labelled == 3
    assert counts.abs_error_sum == pytest.approx(3e100, rel=1e-12)
    assert counts.squared_error_sum == pytest.approx(3e200, rel=1e-12)


def test_version_counts_query_is_bounded_by_the_model_and_time_index(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    query = version_counts_query("iris", NOW)
    sql = str(query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}))
    with store.engine.connect() as conn:
        plan = " ".join(row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    store.close()
    assert "SEARCH predictions USING INDEX ix_predictions_model_created_at" in plan, plan


def test_a_store_made_before_the_quality_index_gets_it_at_open(store: SqlStore) -> None:
    with store.engine.begin() as conn:  # as the release before schema versions left it
        conn.execute(text("DROP INDEX ix_predictions_model_created_at"))
        conn.execute(text("DROP TABLE steward_schema_version"))
    assert "ix_predictions_model_created_at" not in indexes(store)
    url = store.engine.url.render_as_string(hide_password=False)
    reopened: list[SqlStore] = []
    threads = [  # replicas starting at once: one makes it, the others find it made
        threading.Thread(target=lambda: reopened.append(open_store(url))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(reopened) == 4
        assert "ix_predictions_model_created_at" in indexes(store)
    finally:
        for opened in reopened:
            opened.close()


def indexes(store: SqlStore) -> set[str]:
    return {str(index["name"]) for index in inspect(store.engine).get_indexes("predictions")}


# --- the log writer, on every backend --------------------------------------------------------


@pytest.fixture
def log(store: SqlStore) -> Iterator[PredictionLog]:
    writer = PredictionLog(store, Metrics(CollectorRegistry()), batch_size=100, max_pending=1000)
    writer.start()
    yield writer
    writer.close(5)


def count(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM predictions")).scalar_one())


@contextlib.contextmanager
def write_locked(store: SqlStore) -> Iterator[Callable[[], None]]:
    """Another process holds the store's write lock until the callable given (or the end)
    releases it: SQLite's file lock, PostgreSQL's EXCLUSIVE lock on predictions (reads go on,
    inserts wait)."""
    if store.engine.dialect.name == "sqlite":
        holder = sqlite3.connect(str(store.engine.url.database), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield holder.rollback
        finally:
            holder.rollback()
            holder.close()
        return
    other = create_engine(store.engine.url)
    try:
        with other.connect() as locking:
            locking.execute(text("LOCK TABLE predictions IN EXCLUSIVE MODE"))
            yield locking.rollback
            locking.rollback()
    finally:
        other.dispose()


def test_log_writes_everything_in_batches(log: PredictionLog, store: SqlStore) -> None:
    rows = [record() for _ in range(950)]
    for start in range(0, 950, 50):
        log.append(rows[start : start + 50])
    log.flush()
    assert count(store) == 950
    assert log.pending == 0
    assert written(log) == 950


def test_log_close_drains(log: PredictionLog, store: SqlStore) -> None:
    log.append([record() for _ in range(300)])
    log.close(5)
    assert count(store) == 300
    with pytest.raises(StoreUnavailable, match="shutting down"):
        log.append([record()])


def test_log_flush_interval_gathers_rows_until_a_batch_fills_someone_waits_or_it_closes(
    store: SqlStore,
) -> None:
    """With an interval longer than the test, only a full batch, a flush or the close writes."""
    log = PredictionLog(store, Metrics(CollectorRegistry()), batch_size=10, flush_interval=3600)
    log.start()
    log.append([record() for _ in range(4)])
    log.append([record() for _ in range(6)])  # a full batch: written without the interval
    assert wait_until(lambda: log.pending == 0, seconds=10)
    assert count(store) == 10
    waiting = [record() for _ in range(3)]
    log.append(waiting)
    assert log.pending == 3
    log.flush_if_pending([waiting[0].id], timeout=10)  # feedback does not wait out the interval
    assert count(store) == 13
    log.append([record() for _ in range(2)])
    assert log.pending == 2
    assert log.close(10) == 0
    assert count(store) == 15


def test_log_close_says_how_many_acknowledged_rows_it_left_unwritten(store: SqlStore) -> None:
    log = PredictionLog(store, Metrics(CollectorRegistry()))
    log.start()
    with write_locked(store):
        log.append([record() for _ in range(5)])
        assert log.close(0.5) == 5
    assert wait_until(lambda: log.pending == 0, seconds=30)  # the writer finishes its batch
    assert count(store) == 5


def test_log_refuses_beyond_max_pending_while_the_store_fails(
    log: PredictionLog, store: SqlStore
) -> None:
    fail_every_insert(store)
    kept = [record() for _ in range(1000)]
    log.append(kept)
    with pytest.raises(StoreUnavailable, match="behind by 1000 rows"):
        log.append([record()])
    with pytest.raises(StoreUnavailable):
        log.flush(timeout=0.2)
    assert wait_until(lambda: log.last_error is not None, seconds=10, interval=0.01)
    assert "disk is failing" in str(log.last_error)
    heal(store)
    log.flush(timeout=10)
    assert count(store) == 1000
    assert log.last_error is None


def test_a_full_log_whose_store_is_only_behind_makes_put_wait(
    log: PredictionLog, store: SqlStore
) -> None:
    """Another process holds the store's write lock: the writer waits (no error), the log
    fills, and ``put`` waits for room instead of refusing; once the lock goes, everything is
    written."""
    with write_locked(store) as release:
        log.append([record() for _ in range(1000)])  # full: max_pending is 1000
        with pytest.raises(StoreUnavailable, match="behind by 1000 rows"):
            log.append([record()])
        late = [record() for _ in range(10)]

        async def put_then_release() -> None:
            waiting = asyncio.ensure_future(log.put(late, wait=30))
            await asyncio.sleep(0.2)
            assert not waiting.done()  # waiting for room, not refused
            release()
            await waiting

        asyncio.run(put_then_release())
    log.flush(timeout=10)
    assert count(store) == 1010
    assert log.last_error is None


def test_a_full_log_whose_store_fails_refuses_put_at_once(
    log: PredictionLog, store: SqlStore
) -> None:
    fail_every_insert(store)
    log.append([record() for _ in range(1000)])
    assert wait_until(lambda: log.last_error is not None, seconds=10, interval=0.01)
    with pytest.raises(StoreUnavailable, match="disk is failing"):
        asyncio.run(log.put([record()], wait=3600))


class GatedStore(SqlStore):
    """A real store whose writer takes one batch per permit: a store that is behind for
    exactly as long as the test says. ``written``: the ids it was given, in order."""

    def __init__(self, store: SqlStore) -> None:
        super().__init__(store.engine)
        self.permits = threading.Semaphore(0)
        self.written: list[str] = []

    def write_predictions(self, records: Sequence[PredictionRecord]) -> None:
        self.permits.acquire()
        super().write_predictions(records)
        self.written += [r.id for r in records]


@pytest.fixture
def gated(store: SqlStore) -> Iterator[tuple[PredictionLog, GatedStore]]:
    """A log of 10 rows at most, written 5 at a time, on a store that writes when let."""
    gate = GatedStore(store)
    writer = PredictionLog(gate, Metrics(CollectorRegistry()), batch_size=5, max_pending=10)
    writer.start()
    yield writer, gate
    gate.permits.release(100)
    writer.close(5)
    gate.close()  # its own hold on a SQLite file; the engine is the store's, closed again


def test_waiting_puts_are_woken_in_line_as_the_writer_makes_room(
    gated: tuple[PredictionLog, GatedStore],
) -> None:
    log, store = gated
    first, second, third = [record() for _ in range(4)], [record() for _ in range(4)], [record()]
    woken: list[str] = []

    async def put(name: str, rows: list[PredictionRecord]) -> None:
        await log.put(rows, wait=3600)  # only room made can end this wait
        woken.append(name)

    async def scenario() -> None:
        log.append([record() for _ in range(10)])  # full; the writer waits for a permit
        waiting = [
            asyncio.create_task(put("first", first)),
            asyncio.create_task(put("second", second)),
        ]
        await asyncio.sleep(0)  # each put runs up to its wait
        assert woken == []
        with pytest.raises(StoreUnavailable, match="behind by 10 rows"):
            log.append([record()])  # no wait: refused at once

        store.permits.release()  # 5 rows written: room for the first put (4), not the second
        await waiting[0]
        assert woken == ["first"]
        waiting.append(asyncio.create_task(put("third", third)))
        await asyncio.sleep(0)
        assert woken == ["first"]  # there is room for its one row, but the second came first

        store.permits.release(2)  # 5 more written, then the first put's 4 follow them
        await asyncio.gather(*waiting)
        assert woken == ["first", "second", "third"]

    asyncio.run(scenario())
    store.permits.release(100)
    log.flush(timeout=10)
    assert count(store) == 19
    assert store.written[10:] == [r.id for r in first + second + third]  # appended in line


def test_a_waiting_put_is_refused_as_soon_as_the_store_fails(
    gated: tuple[PredictionLog, GatedStore],
) -> None:
    log, store = gated

    async def scenario() -> None:
        log.append([record() for _ in range(10)])
        waiting = asyncio.create_task(log.put([record()], wait=3600))
        await asyncio.sleep(0)
        fail_every_insert(store)
        store.permits.release()  # the write fails, and so does the write probe: the store is down
        with pytest.raises(StoreUnavailable, match=r"behind by 10 rows \(.*disk is failing"):
            await waiting

    asyncio.run(scenario())
    heal(store)
    store.permits.release(100)
    log.flush(timeout=10)
    assert count(store) == 10  # every acknowledged row, and not the refused one


def test_a_waiting_put_is_refused_as_soon_as_the_log_closes(
    gated: tuple[PredictionLog, GatedStore],
) -> None:
    log, store = gated

    async def scenario() -> None:
        log.append([record() for _ in range(10)])
        waiting = asyncio.create_task(log.put([record()], wait=3600))
        await asyncio.sleep(0)
        closing = asyncio.create_task(asyncio.to_thread(log.close, 60))
        with pytest.raises(StoreUnavailable, match="shutting down"):
            await waiting  # refused while the store has written nothing yet
        assert count(store) == 0
        store.permits.release(100)
        await closing

    asyncio.run(scenario())
    assert count(store) == 10


def test_a_put_that_leaves_the_line_lets_the_next_one_in(
    gated: tuple[PredictionLog, GatedStore],
) -> None:
    """The first in line needs more room than there is and gives up (its client left): the
    one behind it fits, and gets in at once, not after the writer's next batch."""
    log, store = gated
    big, small = [record() for _ in range(8)], [record()]

    async def scenario() -> None:
        log.append([record() for _ in range(10)])
        first = asyncio.create_task(log.put(big, wait=3600))
        second = asyncio.create_task(log.put(small, wait=3600))
        await asyncio.sleep(0)
        store.permits.release()  # 5 written: room for 5, not for the first put's 8
        assert await asyncio.to_thread(wait_until, lambda: log.pending == 5, 10, 0.01)
        assert (first.done(), second.done()) == (False, False)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, timeout=10)  # no permit given: only the leaving lets it in
        assert log.pending == 6

    asyncio.run(scenario())
    store.permits.release(100)
    log.flush(timeout=10)
    assert set(store.get_predictions([r.id for r in big + small])) == {small[0].id}
    assert count(store) == 11  # the 10 it held and the one that got in


def test_a_put_that_waits_too_long_is_refused_and_each_refusal_is_its_own(
    gated: tuple[PredictionLog, GatedStore],
) -> None:
    log, store = gated

    async def scenario() -> list[BaseException]:
        log.append([record() for _ in range(10)])
        with pytest.raises(StoreUnavailable, match="behind by 10 rows"):
            await log.put([record()], wait=0.05)  # no room was made in time
        waiting = [asyncio.create_task(log.put([record()], wait=3600)) for _ in range(2)]
        await asyncio.sleep(0)
        closing = asyncio.create_task(asyncio.to_thread(log.close, 60))
        refused = await asyncio.gather(*waiting, return_exceptions=True)
        store.permits.release(100)
        await closing
        return [r for r in refused if isinstance(r, BaseException)]

    first, second = asyncio.run(scenario())
    assert isinstance(first, StoreUnavailable)
    assert isinstance(second, StoreUnavailable)
    assert first is not second  # a request annotates its own error (the model it served)


def test_flush_if_pending_returns_with_its_rows_written(log: PredictionLog) -> None:
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
        assert (got.created_at, got.inputs, got.output) == (row.created_at, INPUTS, SETOSA)


# --- rows the store refuses: isolated and quarantined, on every backend ----------------------

BEYOND_64_BITS = 2**70  # what an int feature of a future buggy validation could let through


@pytest.fixture
def store_log(store: SqlStore) -> Iterator[PredictionLog]:
    writer = PredictionLog(store, Metrics(CollectorRegistry()), batch_size=100, max_pending=1000)
    writer.start()
    yield writer
    writer.close(5)


def unstorable(prediction_id: str | None = None) -> PredictionRecord:
    row = record()
    return row._replace(
        id=prediction_id or row.id,
        names=("a", "visits", "colour"),
        row=(1.5, BEYOND_64_BITS, "red"),
    )


def quarantined(store: SqlStore) -> list[dict[str, object]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(quarantine).order_by(quarantine.c.seq)).mappings().all()
    return [dict(row) for row in rows]


def rejected(log: PredictionLog) -> float | None:
    return log.metrics.registry.get_sample_value("steward_prediction_log_rejected_rows_total")


def written(log: PredictionLog) -> float | None:
    return log.metrics.registry.get_sample_value("steward_prediction_log_written_rows_total")


def test_a_row_that_cannot_be_encoded_is_refused_as_such(store: SqlStore) -> None:
    good = record()
    with pytest.raises(RowsRefused, match="64-bit"):
        store.write_predictions([good, unstorable()])
    assert store.get_predictions([good.id]) == {}  # one transaction: nothing of it written


def test_a_duplicate_id_is_refused_as_such(store: SqlStore) -> None:
    row = record()
    store.write_predictions([row])
    with pytest.raises(RowsRefused):
        store.write_predictions([row])


def test_a_read_only_store_is_an_outage_not_a_refusal(store: SqlStore) -> None:
    """A SQLite file opened read-only; a PostgreSQL whose transactions are read-only (a hot
    standby after a failover, default_transaction_read_only): the store is down, the rows are
    not at fault."""
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        read_only_url = f"sqlite:///file:{url.database}?mode=ro&uri=true"
    else:
        options = f"{url.query['options']} -cdefault_transaction_read_only=on"
        read_only_url = url.update_query_dict({"options": options}).render_as_string(False)
    read_only = open_store(read_only_url)
    try:
        with pytest.raises(StoreUnavailable, match=r"read-?only") as raised:
            read_only.write_predictions([record()])
        assert not isinstance(raised.value, RowsRefused)
        with pytest.raises(StoreUnavailable, match=r"read-?only"):
            read_only.check_writable()
    finally:
        read_only.close()


def test_check_writable_fails_while_predictions_refuse_inserts(store: SqlStore) -> None:
    fail_every_insert(store)
    with pytest.raises(StoreUnavailable, match="disk is failing"):
        store.check_writable()
    heal(store)
    store.check_writable()
    assert quarantined(store) == []


def test_quarantine_keeps_what_an_operator_needs(store: SqlStore) -> None:
    at = datetime(2026, 5, 1, 12, tzinfo=UTC)
    row = QuarantinedPrediction(
        "0123", "iris", 3, at, "JSONEncodeError: Integer exceeds 64-bit range", "{'a': 1}", at
    )
    store.quarantine(row)
    store.quarantine(row)  # the same id twice (a duplicate-id row refused twice): both kept
    (first, second) = quarantined(store)
    assert first["seq"] != second["seq"]
    assert {k: v for k, v in first.items() if k != "seq"} == {
        "id": "0123",
        "model": "iris",
        "version": 3,
        "created_at": first["created_at"],
        "quarantined_at": first["quarantined_at"],
        "reason": "JSONEncodeError: Integer exceeds 64-bit range",
        "row_repr": "{'a': 1}",
    }
    for column in ("created_at", "quarantined_at"):
        stored = first[column]
        assert isinstance(stored, datetime)
        assert stored.replace(tzinfo=stored.tzinfo or UTC) == at


def test_an_unstorable_row_is_quarantined_and_every_other_row_written(
    store_log: PredictionLog, store: SqlStore
) -> None:
    before, after = [record() for _ in range(30)], [record() for _ in range(30)]
    bad = unstorable()
    store_log.append([*before, bad, *after])  # one batch
    store_log.flush(timeout=10)
    good = [r.id for r in before + after]
    assert set(store.get_predictions([*good, bad.id])) == set(good)
    (kept,) = quarantined(store)
    assert (kept["id"], kept["model"], kept["version"]) == (bad.id, "iris", 1)
    assert (
        kept["reason"]
        == "RowsRefused: prediction store cannot encode a row: Integer exceeds 64-bit range"
    )
    assert str(BEYOND_64_BITS) in str(kept["row_repr"])
    assert "'colour': 'red'" in str(kept["row_repr"])
    assert rejected(store_log) == 1
    assert written(store_log) == 60
    assert store_log.last_error is None
    assert store_log.pending == 0


def test_a_row_the_database_refuses_is_quarantined_and_every_other_row_written(
    store_log: PredictionLog, store: SqlStore
) -> None:
    first = record()
    store.write_predictions([first])
    again = record()._replace(id=first.id, model="diabetes")  # a duplicate primary key
    before, after = [record() for _ in range(10)], [record() for _ in range(10)]
    store_log.append(before)
    store_log.append([again])
    store_log.append(after)
    store_log.flush_if_pending([after[-1].id], timeout=10)
    assert len(store.get_predictions([r.id for r in before + after])) == 20
    assert store.get_predictions([first.id])[first.id].model == "iris"  # the original stays
    (kept,) = quarantined(store)
    assert (kept["id"], kept["model"]) == (first.id, "diabetes")
    assert str(kept["reason"]).startswith("RowsRefused: prediction store failed to write")
    assert rejected(store_log) == 1
    assert store_log.last_error is None


def test_many_bad_rows_anywhere_in_a_batch_are_each_isolated(
    store_log: PredictionLog, store: SqlStore
) -> None:
    rows = [record() for _ in range(100)]  # exactly one batch
    for position in (0, 1, 37, 98, 99):
        rows[position] = unstorable(rows[position].id)
    store_log.append(rows)
    store_log.flush(timeout=10)
    bad = {rows[i].id for i in (0, 1, 37, 98, 99)}
    assert set(store.get_predictions([r.id for r in rows])) == {r.id for r in rows} - bad
    assert [q["id"] for q in quarantined(store)] == [rows[i].id for i in (0, 1, 37, 98, 99)]
    assert rejected(store_log) == 5
    assert written(store_log) == 95


def test_feedback_never_waits_on_a_quarantined_row(store_log: PredictionLog) -> None:
    bad, later = unstorable(), record()
    store_log.append([bad])
    store_log.append([later])
    store_log.flush_if_pending([bad.id], timeout=10)  # done: quarantined, not pending
    store_log.flush_if_pending([later.id], timeout=10)
    assert store_log.store.get_predictions([bad.id, later.id]).keys() == {later.id}


def test_a_store_that_is_down_keeps_every_row_and_quarantines_none(
    store_log: PredictionLog, store: SqlStore
) -> None:
    """Even a row that could never be stored waits while the store is down: whether it is the
    row or the store is decided only once the store works again."""
    fail_every_insert(store)
    rows = [record() for _ in range(40)]
    bad = unstorable()
    store_log.append([*rows[:20], bad, *rows[20:]])
    assert wait_until(lambda: store_log.last_error is not None, seconds=10, interval=0.01)
    assert "disk is failing" in str(store_log.last_error)
    with pytest.raises(StoreUnavailable, match="did not take pending rows"):
        store_log.flush(timeout=0.5)
    assert store_log.pending == 41
    assert rejected(store_log) == 0
    assert quarantined(store) == []
    heal(store)
    store_log.flush(timeout=10)
    assert len(store.get_predictions([r.id for r in rows])) == 40
    assert [q["id"] for q in quarantined(store)] == [bad.id]
    assert rejected(store_log) == 1
    assert store_log.last_error is None


# --- shadow predictions: their own table, labelled with their served row ---------------------


def shadow(
    of: PredictionRecord, version: int = 2, prediction: str | int | float = "virginica"
) -> PredictionRecord:
    """A shadow prediction of the served row ``of`` by ``version``, made a moment later."""
    return of._replace(
        id=uuid.uuid4().hex,
        version=version,
        created_at=of.created_at + timedelta(milliseconds=5),
        prediction=prediction,
        probabilities=None,
        shadow_of=of.id,
    )


def test_shadow_rows_are_stored_apart_and_read_with_their_served_row(store: SqlStore) -> None:
    served, alone = record(), record()
    first, second = shadow(served), shadow(served, version=3, prediction="setosa")
    store.write_predictions([served, first, alone, second])  # one transaction, mixed
    found = store.get_predictions([served.id, alone.id, first.id])
    assert set(found) == {served.id, alone.id}  # a shadow row is not a feedback target
    assert found[alone.id].shadows == ()
    assert [(s.id, s.prediction_id, s.model, s.version, s.output) for s in
            found[served.id].shadows] == [
        (first.id, served.id, "iris", 2, {"prediction": "virginica"}),
        (second.id, served.id, "iris", 3, {"prediction": "setosa"}),
    ]  # fmt: skip
    stored = found[served.id].shadows[0]
    assert abs((stored.created_at - first.created_at).total_seconds()) < 1e-3
    assert (stored.ground_truth, stored.correct, stored.abs_error, stored.feedback_at) == (
        None, None, None, None,
    )  # fmt: skip
    with store.engine.connect() as conn:  # the served table holds served rows only
        ids = {row[0] for row in conn.execute(text("SELECT id FROM predictions"))}
    assert ids == {served.id, alone.id}
    assert "inputs" not in shadow_predictions.c


def test_a_shadow_label_lands_only_with_its_served_label(store: SqlStore) -> None:
    served, other = record(), record()
    mine, theirs = shadow(served), shadow(other)
    store.write_predictions([served, other, mine, theirs])
    at = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    wrong_row = Label(theirs.id, "setosa", True, None, at)  # a shadow of another row: ignored
    label_mine = Label(mine.id, "setosa", False, None, at)
    assert store.label([Label(served.id, "setosa", True, None, at, (label_mine, wrong_row))]) == {
        served.id,
        mine.id,
    }
    found = store.get_predictions([served.id, other.id])
    assert found[served.id].shadows == (
        StoredShadow(mine.id, served.id, "iris", 2, found[served.id].shadows[0].created_at,
                     {"prediction": "virginica"}, "setosa", False, None, at),
    )  # fmt: skip
    assert found[other.id].shadows[0].ground_truth is None
    # the served row is labelled: a second label (and its shadow's) changes nothing
    again = Label(mine.id, "virginica", True, None, at)
    assert store.label([Label(served.id, "virginica", False, None, at, (again,))]) == set()
    assert store.get_predictions([served.id])[served.id].shadows[0].correct is False
    # the other row's shadow lands with its own served row; a "shadow" label keyed by a served
    # id labels no served row
    third = record()
    store.write_predictions([third])
    posing = Label(third.id, "virginica", True, None, at)
    assert store.label([Label(other.id, "virginica", False, None, at, (wrong_row, posing))]) == {
        other.id,
        theirs.id,
    }
    assert store.get_predictions([third.id])[third.id].ground_truth is None


def test_concurrent_labels_label_served_and_shadow_rows_once(store: SqlStore) -> None:
    served = record()
    first, second = shadow(served), shadow(served, version=3)
    store.write_predictions([served, first, second])
    results: list[set[str]] = []

    def send(truth: str) -> None:
        shadows = (label(first.id, truth, False), label(second.id, truth, False))
        results.append(store.label([Label(served.id, truth, True, None, NOW, shadows)]))

    threads = [
        threading.Thread(target=send, args=(t,))
        for t in ("setosa", "virginica", "versicolor", "setosa")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=len) == [set(), set(), set(), {served.id, first.id, second.id}]
    stored = store.get_predictions([served.id])[served.id]
    assert {s.ground_truth for s in stored.shadows} == {stored.ground_truth}


def test_version_counts_keep_served_and_shadow_rows_apart(store: SqlStore) -> None:
    hour = timedelta(hours=1)
    v1 = [record()._replace(created_at=NOW - hour) for _ in range(3)]
    v2 = [record()._replace(version=2, created_at=NOW - hour)]
    shadows = [shadow(v1[0]), shadow(v1[1]), shadow(v1[2], version=3), shadow(v2[0], version=1)]
    old = record()._replace(created_at=NOW - 8 * timedelta(days=1))
    store.write_predictions([*v1, *v2, *shadows, old, shadow(old)])
    at = NOW
    store.label(
        [
            Label(v1[0].id, "a", True, None, at, (Label(shadows[0].id, "a", False, None, at),)),
            Label(v1[1].id, "b", False, None, at, (Label(shadows[1].id, "b", True, None, at),)),
            Label(v2[0].id, "c", True, None, at, (Label(shadows[3].id, "c", True, None, at),)),
        ]
    )
    assert store.version_counts("iris", WEEK_AGO) == [
        VersionCounts(1, 3, 2, 1, 0.0, 0.0),
        VersionCounts(1, 1, 1, 1, 0.0, 0.0, shadow=True),
        VersionCounts(2, 1, 1, 1, 0.0, 0.0),
        VersionCounts(2, 2, 2, 1, 0.0, 0.0, shadow=True),
        VersionCounts(3, 1, 0, 0, 0.0, 0.0, shadow=True),
    ]
    assert store.version_counts("iris", None)[:2] == [
        VersionCounts(1, 4, 2, 1, 0.0, 0.0),
        VersionCounts(1, 1, 1, 1, 0.0, 0.0, shadow=True),
    ]


def test_paired_counts_score_both_versions_on_the_same_labels(store: SqlStore) -> None:
    hour = timedelta(hours=1)
    rows = [record("diabetes")._replace(created_at=NOW - hour) for _ in range(5)]
    shadows = [shadow(r, prediction=1.0) for r in rows]
    late = record("diabetes")._replace(created_at=NOW - 30 * timedelta(days=1))
    store.write_predictions([*rows, *shadows, late, shadow(late, prediction=1.0)])

    def both(i: int, served: float, shadowed: float | None) -> Label:
        extra = () if shadowed is None else (Label(shadows[i].id, 9.0, None, shadowed, NOW),)
        return Label(rows[i].id, 9.0, None, served, NOW, extra)

    store.label(
        [
            both(0, 1.0, 2.0),
            both(1, 3.0, 0.5),
            both(2, 4.0, None),  # the shadow could not be scored: not a pair
            Label(late.id, 9.0, None, 50.0, NOW),
        ]
    )  # rows 3 and 4: not labelled
    assert store.paired_counts("diabetes", WEEK_AGO) == [
        PairedCounts(1, 2, labelled=2, champion_correct=0, challenger_correct=0,
                     champion_abs_error_sum=4.0, challenger_abs_error_sum=2.5,
                     champion_squared_error_sum=10.0, challenger_squared_error_sum=4.25),
    ]  # fmt: skip
    assert store.paired_counts("iris", None) == []


def test_shadow_quality_queries_are_bounded_by_the_shadow_model_and_time_index(
    tmp_path: Path,
) -> None:
    """Shadow rows of a model in the window by their (model, created_at) index; each one's
    served row by its primary key."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    plans = []
    for query in (
        version_counts_query("iris", NOW, shadow_predictions),
        paired_counts_query("iris", NOW),
    ):
        sql = str(
            query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
        )
        with store.engine.connect() as conn:
            plans.append(
                " ".join(row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
            )
    store.close()
    index = "SEARCH shadow_predictions USING INDEX ix_shadow_predictions_model_created_at"
    assert all(index in plan for plan in plans), plans
    assert "SEARCH predictions USING INDEX sqlite_autoindex_predictions_1 (id=?)" in plans[1]


@pytest.fixture
def postgresql() -> Iterator[SqlStore]:
    with postgres_store("steward_test") as opened:
        yield opened


def test_the_quality_and_retraining_queries_can_use_their_indexes_on_postgresql(
    postgresql: SqlStore,
) -> None:
    """The plans the SQLite tests above check, on PostgreSQL: with sequential scans priced out
    (a table this small is cheaper to scan), each query reaches its rows by the index."""
    plans = []
    for query in (
        version_counts_query("iris", NOW),
        version_counts_query("iris", NOW, shadow_predictions),
        paired_counts_query("iris", NOW),
        labelled_rows_query("iris", WEEK_AGO, NOW),
    ):
        sql = str(
            query.compile(dialect=postgresql.engine.dialect, compile_kwargs={"literal_binds": True})
        )
        with postgresql.engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plans.append(" ".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}")))
    served, shadow, paired, labelled = plans
    bounded = "Index Cond: (((model)::text = 'iris'::text) AND (created_at >= '2026-06-01"
    assert "Index Scan using ix_predictions_model_" in served, served
    assert bounded in served, served
    assert "Index Scan using ix_shadow_predictions_model_created_at" in shadow, shadow
    assert bounded in shadow, shadow
    assert "Index Scan using ix_shadow_predictions_model_created_at" in paired, paired
    assert "Index Scan using predictions_pkey on predictions" in paired, paired
    # (model, created_at) or created_at alone: the planner's choice on an empty table
    assert "Index Scan using ix_predictions_" in labelled, labelled
    assert "Seq Scan" not in " ".join(plans), plans


def test_paired_counts_of_classifiers_per_pair_of_versions(store: SqlStore) -> None:
    rows = [record() for _ in range(3)] + [record()._replace(version=2)]
    shadows = [shadow(rows[0]), shadow(rows[1]), shadow(rows[2], version=3), shadow(rows[3], 1)]
    store.write_predictions([*rows, *shadows])
    store.label(
        [
            Label(r.id, "x", served, None, NOW, (Label(s.id, "x", shadowed, None, NOW),))
            for r, s, served, shadowed in zip(
                rows, shadows, (True, True, False, False), (False, True, True, True), strict=True
            )
        ]
    )
    assert store.paired_counts("iris", None) == [
        PairedCounts(1, 2, 2, 2, 1, 0.0, 0.0, 0.0, 0.0),
        PairedCounts(1, 3, 1, 0, 1, 0.0, 0.0, 0.0, 0.0),
        PairedCounts(2, 1, 1, 0, 1, 0.0, 0.0, 0.0, 0.0),
    ]


def test_a_store_made_before_shadow_predictions_gets_the_table_at_open(store: SqlStore) -> None:
    """A store of the previous release (no shadow table) opened by several replicas at once:
    one creates the table and its indexes, the others find them made, old rows stay."""
    old = record()
    store.write_predictions([old])
    with store.engine.begin() as conn:  # as that release left it: before schema versions too
        conn.execute(text("DROP TABLE shadow_predictions"))
        conn.execute(text("DROP TABLE steward_schema_version"))
    assert "shadow_predictions" not in inspect(store.engine).get_table_names()
    url = store.engine.url.render_as_string(hide_password=False)
    reopened: list[SqlStore] = []
    threads = [threading.Thread(target=lambda: reopened.append(open_store(url))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(reopened) == 4
        found = {
            str(i["name"]) for i in inspect(reopened[0].engine).get_indexes("shadow_predictions")
        }
        assert found == {
            "ix_shadow_predictions_prediction_id",
            "ix_shadow_predictions_model_created_at",
        }
        row = shadow(old)
        reopened[0].write_predictions([row])
        assert [s.id for s in store.get_predictions([old.id])[old.id].shadows] == [row.id]
    finally:
        for opened in reopened:
            opened.close()


def test_a_shadow_row_the_store_refuses_is_quarantined_and_the_rest_written(
    store_log: PredictionLog, store: SqlStore
) -> None:
    served = record()
    good = shadow(served)
    duplicate = shadow(served)._replace(id=good.id, version=3)  # a duplicate primary key
    unencodable = shadow(served, prediction=BEYOND_64_BITS)
    after = record()
    store_log.append([served, good, duplicate, unencodable, after])  # one batch
    store_log.flush(timeout=10)
    stored = store.get_predictions([served.id, after.id])
    assert set(stored) == {served.id, after.id}
    assert [(s.id, s.version) for s in stored[served.id].shadows] == [(good.id, 2)]
    kept = quarantined(store)
    assert [(q["id"], q["version"]) for q in kept] == [(good.id, 3), (unencodable.id, 2)]
    assert str(BEYOND_64_BITS) in str(kept[1]["row_repr"])
    assert rejected(store_log) == 2
    assert written(store_log) == 3


def test_flush_if_pending_waits_for_the_shadow_rows_of_the_ids(
    gated: tuple[PredictionLog, GatedStore],
) -> None:
    """A served row written, its shadow row still in the buffer: feedback for the served id
    waits until the shadow row is written too, so both are labelled together."""
    writer, store = gated
    served = record()
    writer.append([served])
    store.permits.release(1)
    assert wait_until(lambda: writer.pending == 0, seconds=10, interval=0.01)
    late = shadow(served)
    writer.append([late])  # the writer needs a permit for it
    threading.Timer(0.2, store.permits.release).start()
    writer.flush_if_pending([served.id], timeout=10)
    assert [s.id for s in store.get_predictions([served.id])[served.id].shadows] == [late.id]


# --- labelled rows: what a retraining learns from --------------------------------------------


def test_labelled_rows_are_the_labelled_served_rows_in_the_window_oldest_first(
    store: SqlStore,
) -> None:
    hour = timedelta(hours=1)
    newest, middle, oldest = (
        record()._replace(version=v, created_at=NOW - age)
        for v, age in ((2, hour), (1, 2 * hour), (1, 3 * hour))
    )
    unlabelled = record()._replace(created_at=NOW - hour)
    other = record("other")._replace(created_at=NOW - hour)
    shadowed = shadow(middle, version=3)
    store.write_predictions([newest, unlabelled, other, shadowed, middle, oldest])
    store.label(
        [
            Label(newest.id, 2.5, None, 0.5, NOW),
            Label(middle.id, "setosa", True, None, NOW, (label(shadowed.id, "setosa", False),)),
            label(oldest.id, "virginica"),
            label(other.id, "setosa"),
        ]
    )
    rows = store.labelled_rows("iris", None, None)
    assert [(r.id, r.version, r.inputs, r.ground_truth) for r in rows] == [
        (oldest.id, 1, INPUTS, "virginica"),
        (middle.id, 1, INPUTS, "setosa"),
        (newest.id, 2, INPUTS, 2.5),
    ]  # the shadow row (labelled too), the unlabelled row and the other model's: absent
    assert [r.created_at for r in rows] == [NOW - 3 * hour, NOW - 2 * hour, NOW - hour]
    # since is inclusive, until exclusive; a bound in any zone is the same instant
    eastern = timezone(timedelta(hours=-5))
    window = store.labelled_rows("iris", (NOW - 2 * hour).astimezone(eastern), NOW - hour)
    assert [r.id for r in window] == [middle.id]
    assert [r.id for r in store.labelled_rows("iris", NOW - hour, None)] == [newest.id]
    assert [r.id for r in store.labelled_rows("iris", None, NOW - 2 * hour)] == [oldest.id]
    assert store.labelled_rows("iris", NOW, None) == []
    assert store.labelled_rows("nope", None, None) == []


def test_labelled_rows_query_is_bounded_by_the_model_and_time_index(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    plans = []
    for since, until in ((None, None), (NOW, None), (WEEK_AGO, NOW)):
        query = labelled_rows_query("iris", since, until)
        sql = str(
            query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
        )
        with store.engine.connect() as conn:
            plans.append(
                " ".join(row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
            )
    store.close()
    for plan in plans:
        assert "SEARCH predictions USING INDEX ix_predictions_model_created_at" in plan, plan
        # ordered by the index itself: only rows made at the same instant are sorted (by id)
        assert "TEMP B-TREE FOR ORDER BY" not in plan, plan


def test_labelled_rows_of_a_store_that_is_down_raise_store_unavailable(store: SqlStore) -> None:
    cascade = "" if store.engine.dialect.name == "sqlite" else " CASCADE"
    with store.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE predictions{cascade}"))
    with pytest.raises(StoreUnavailable, match="failed to read labelled predictions"):
        store.labelled_rows("iris", None, None)
