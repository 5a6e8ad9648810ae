"""The SQLite store's file, removed or replaced under an open store (app/store/sqlite_file.py).

The same cases through a real server, with load and recovery, are in tests/test_faults_store.py.
"""

import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.errors import StoreUnavailable
from app.store import open_store
from app.store.base import PredictionRecord


def records(count: int) -> list[PredictionRecord]:
    return [
        PredictionRecord(
            id=uuid.uuid4().hex,
            model="iris",
            version=1,
            created_at=datetime.now(UTC),
            names=("a",),
            row=(1.5,),
            prediction="setosa",
            probabilities=None,
        )
        for _ in range(count)
    ]


def ids_in(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM predictions")}


def test_a_removed_file_is_rebuilt_with_every_row_written_before_and_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}")
    before, after = records(30), records(20)
    try:
        store.write_predictions(before)
        for name in ("store.db", "store.db-wal", "store.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        store.write_predictions(after)
        assert set(store.get_predictions([r.id for r in before + after])) == {
            r.id for r in before + after
        }
    finally:
        store.close()
    assert ids_in(path) == {r.id for r in before + after}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not (tmp_path / "store.db.rebuilding").exists()


def test_a_file_replaced_by_another_is_written_to_with_its_tables_made(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}")
    old, new = records(5), records(5)
    try:
        store.write_predictions(old)
        path.rename(tmp_path / "old.db")
        sqlite3.connect(path).close()  # an empty database put in its place
        store.write_predictions(new)
    finally:
        store.close()
    assert ids_in(path) == {r.id for r in new}


def test_a_removed_file_that_cannot_be_rebuilt_is_an_outage_until_it_is_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}")
    moved = tmp_path / "moved.db"
    try:
        store.write_predictions(records(3))
        path.rename(moved)
        blocker = tmp_path / "store.db.rebuilding"
        blocker.mkdir()  # the copy cannot be made: as on a read-only or full disk
        with pytest.raises(StoreUnavailable, match="cannot be rebuilt"):
            store.write_predictions(records(1))
        with pytest.raises(StoreUnavailable, match="cannot be rebuilt"):
            store.check_writable()
        moved.rename(path)  # the same file back: the store takes it up again
        written = records(4)
        store.write_predictions(written)
    finally:
        store.close()
    assert {r.id for r in written} <= ids_in(path)
    assert len(ids_in(path)) == 7
