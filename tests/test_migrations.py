"""Schema versions: fresh stores, stores made before versions (upgraded in place, rows kept),
several processes migrating one store at once, and a store from a newer Steward refused."""

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from helpers import assert_one_line_error, postgres_database, run_cli, wait_until
from helpers import postgres_url as url_of
from sqlalchemy import create_engine, insert, inspect, text

from app.errors import StoreSchemaTooNew
from app.store import PredictionRecord, open_store
from app.store.migrations import LATEST, schema_version
from app.store.schema import predictions, schema

OPEN_STORE = "import sys; from app.store import open_store; open_store(sys.argv[1]).close()"
EXPECTED_INDEXES = {
    "predictions": {
        "ix_predictions_model_version_created_at",
        "ix_predictions_model_created_at",
        "ix_predictions_created_at",
    },
    "shadow_predictions": {
        "ix_shadow_predictions_prediction_id",
        "ix_shadow_predictions_model_created_at",
    },
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store's URL: a new SQLite file, or a new PostgreSQL database dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with postgres_database("steward_migrate") as name:
        yield url_of(name)


def version_rows(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(schema_version.select()).scalars())
    finally:
        engine.dispose()


def assert_latest_schema(url: str) -> None:
    engine = create_engine(url)
    try:
        found = inspect(engine)
        assert set(schema.tables) <= set(found.get_table_names())
        for table, indexes in EXPECTED_INDEXES.items():
            assert {index["name"] for index in found.get_indexes(table)} == indexes
    finally:
        engine.dispose()
    assert version_rows(url) == [LATEST]


def test_a_new_store_is_created_at_the_latest_version(url: str) -> None:
    open_store(url).close()
    assert_latest_schema(url)
    open_store(url).close()  # opening again changes nothing
    assert_latest_schema(url)


def test_processes_migrating_one_new_store_at_once_all_succeed(url: str) -> None:
    processes = [
        subprocess.Popen([sys.executable, "-c", OPEN_STORE, url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, errors
    assert_latest_schema(url)


# The store as Steward made it before schema versions (less the indexes added later, which
# that baseline also brings): no version table, no created_at index.
PRE_VERSION_DDL = (
    "CREATE TABLE predictions (id VARCHAR(64) PRIMARY KEY, model VARCHAR(64) NOT NULL, "
    "version INTEGER NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL, inputs JSON NOT "
    "NULL, output JSON NOT NULL, ground_truth TEXT, correct BOOLEAN, abs_error FLOAT, "
    "feedback_at TIMESTAMP WITH TIME ZONE)",
    "CREATE INDEX ix_predictions_model_version_created_at ON predictions "
    "(model, version, created_at)",
)
OLD_IDS = [f"0190aaaa00007000800000000000000{n}" for n in range(3)]
OLD_TIMES = [datetime(2024, 6, 1, 12, 0, n, tzinfo=UTC) for n in range(3)]


def test_a_store_made_before_schema_versions_is_upgraded_in_place(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in PRE_VERSION_DDL:
            conn.execute(text(statement))
        conn.execute(
            insert(predictions),
            [
                {
                    "id": OLD_IDS[n],
                    "model": "iris",
                    "version": 1,
                    "created_at": OLD_TIMES[n],
                    "inputs": {"a": n},
                    "output": {"prediction": "setosa"},
                    "ground_truth": '"setosa"',
                    "correct": n > 0,
                }
                for n in range(3)
            ],
        )
    engine.dispose()

    store = open_store(url)
    try:
        old = store.get_predictions(OLD_IDS)
        assert sorted((row.inputs["a"], row.correct) for row in old.values()) == [
            (0, False),
            (1, True),
            (2, True),
        ]
        assert sorted(row.created_at for row in old.values()) == OLD_TIMES
        # and it takes new rows, shadow ones included, in the tables it gained
        served = PredictionRecord(
            uuid.uuid4().hex, "iris", 2, datetime.now(UTC), ("a",), (7,), "virginica"
        )
        shadow = served._replace(id=uuid.uuid4().hex, version=3, shadow_of=served.id)
        store.write_predictions([served, shadow])
        (stored,) = store.get_predictions([served.id]).values()
        assert [s.id for s in stored.shadows] == [shadow.id]
    finally:
        store.close()
    assert_latest_schema(url)


def set_version(url: str, version: int) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(schema_version.update().values(version=version))
    engine.dispose()


def test_a_store_from_a_newer_steward_is_refused(url: str) -> None:
    open_store(url).close()
    set_version(url, LATEST + 1)
    with pytest.raises(StoreSchemaTooNew) as refused:
        open_store(url)
    assert f"schema version {LATEST + 1}, newer than this Steward's ({LATEST})" in str(
        refused.value
    )
    assert version_rows(url) == [LATEST + 1]  # left as it was


def test_steward_serve_refuses_a_newer_store_in_one_line(
    tmp_path: Path,
    models_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    url = f"sqlite:///{data / 'steward.db'}"
    open_store(url).close()
    set_version(url, LATEST + 1)
    monkeypatch.setenv("STEWARD_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("STEWARD_DATA_DIR", str(data))
    code, out, err = run_cli(capsys, "serve", "--port", "1")
    assert code == 1
    assert out == ""
    assert_one_line_error(
        err, f"schema version {LATEST + 1}, newer than this Steward's", "STEWARD_DATA_DIR"
    )


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    """A new PostgreSQL database's URL, dropped after."""
    with postgres_database("steward_migrate") as name:
        yield url_of(name)


def _at_version_1_without_created_at_index(url: str) -> str:
    """The store as the release before ``ix_predictions_created_at`` left it, with rows; the
    psycopg URL of that database."""
    open_store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_predictions_created_at"))
        conn.execute(schema_version.update().values(version=1))
        conn.execute(insert(predictions), [_row(n) for n in range(20)])
    engine.dispose()
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _row(n: int) -> dict[str, object]:
    return {
        "id": uuid.uuid4().hex,
        "model": "iris",
        "version": 1,
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),  # all at one instant: not unique
        "inputs": {"a": n},
        "output": {"prediction": "setosa"},
    }


def _index_state(dsn: str) -> tuple[bool, bool] | None:
    """(valid, unique) of ix_predictions_created_at; None when there is none."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT indisvalid, indisunique FROM pg_index "
            "WHERE indexrelid = to_regclass('ix_predictions_created_at')"
        ).fetchone()
    return None if row is None else (row[0], row[1])


def test_the_created_at_index_is_built_without_blocking_inserts_on_postgresql(
    postgres_url: str,
) -> None:
    """A replica of the older release is mid-insert when a new one migrates: its transaction
    holds the table's ROW EXCLUSIVE lock. A plain CREATE INDEX queues for SHARE behind it, and
    every insert after queues behind that; CREATE INDEX CONCURRENTLY lets them through."""
    dsn = _at_version_1_without_created_at_index(postgres_url)
    with psycopg.connect(dsn) as old_replica, psycopg.connect(dsn, autocommit=True) as other:
        old_replica.execute(
            "INSERT INTO predictions (id, model, version, created_at, inputs, output) "
            "VALUES (%s, 'iris', 1, now(), '{}', '{}')",
            (uuid.uuid4().hex,),
        )  # left open
        upgrade = subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE, postgres_url], stderr=subprocess.PIPE, text=True
        )
        try:

            def building() -> bool:
                return bool(
                    other.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE "
                        "'CREATE INDEX%%' AND wait_event_type = 'Lock' AND datname = "
                        "current_database()"
                    ).fetchone()[0]  # type: ignore[index]
                )

            assert wait_until(building, seconds=60), upgrade.stderr
            # Bounded, so that a blocked insert fails the test instead of hanging it.
            other.execute("SET lock_timeout = '10s'")
            other.execute(
                "INSERT INTO predictions (id, model, version, created_at, inputs, output) "
                "VALUES (%s, 'iris', 1, now(), '{}', '{}')",
                (uuid.uuid4().hex,),
            )
        finally:
            old_replica.commit()
            _, err = upgrade.communicate(timeout=120)
    assert upgrade.returncode == 0, err
    assert _index_state(dsn) == (True, False)
    assert_latest_schema(postgres_url)


def test_an_invalid_created_at_index_is_dropped_and_built_again_on_postgresql(
    postgres_url: str,
) -> None:
    """A concurrent build that failed leaves an invalid index; IF NOT EXISTS alone would keep
    it, and retention would scan the whole table."""
    dsn = _at_version_1_without_created_at_index(postgres_url)
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error):
        # unique on rows made at one instant: the build fails, its index stays, invalid
        conn.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY ix_predictions_created_at ON predictions (created_at)"
        )
    assert _index_state(dsn) == (False, True)
    open_store(postgres_url).close()
    assert _index_state(dsn) == (True, False)
    assert_latest_schema(postgres_url)
