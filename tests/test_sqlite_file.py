"""The SQLite store's file, removed or replaced under an open store (app/store/sqlite_file.py).

The same cases through a real server, with load and recovery, are in tests/test_faults_store.py.
"""

import sqlite3
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import bind, mounted, read_only

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


def remove_store_files(folder: Path) -> None:
    """``rm store.db*``: the file, its write-ahead log and shared memory, as an operator would."""
    for name in ("store.db", "store.db-wal", "store.db-shm"):
        (folder / name).unlink(missing_ok=True)


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
        remove_store_files(tmp_path)
        store.write_predictions(after)
        assert set(store.get_predictions([r.id for r in before + after])) == {
            r.id for r in before + after
        }
    finally:
        store.close()
    assert ids_in(path) == {r.id for r in before + after}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not list(tmp_path.glob("*.rebuilding"))


def test_a_file_replaced_by_another_is_written_to_with_its_tables_made(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}")
    old, new = records(5), records(5)
    try:
        store.write_predictions(old)
        for suffix in ("", "-wal", "-shm"):  # `mv store.db* elsewhere`
            Path(f"{path}{suffix}").rename(tmp_path / f"old.db{suffix}")
        backup = tmp_path / "backup.db"
        open_store(f"sqlite:///{backup}").close()  # a restored backup put in its place
        backup.rename(path)
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
        with read_only(tmp_path):  # the copy cannot be made: as on a read-only or full disk
            with pytest.raises(StoreUnavailable, match="cannot be rebuilt") as refused:
                store.write_predictions(records(1))
            with pytest.raises(StoreUnavailable, match="cannot be rebuilt"):
                store.check_writable()
        # The reason, not the server's paths: this message is the 503 body of /predict.
        assert str(refused.value).endswith("cannot be rebuilt here: Read-only file system")
        assert str(tmp_path) not in str(refused.value)
        moved.rename(path)  # the same file back: the store takes it up again
        written = records(4)
        store.write_predictions(written)
    finally:
        store.close()
    assert {r.id for r in written} <= ids_in(path)
    assert len(ids_in(path)) == 7


def test_while_its_volume_is_unmounted_the_store_writes_nothing_under_the_mount_point(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The data folder is a volume's mount point, and the volume is unmounted (as for fsck): the
    bare mount point is on another disk, and a file written there would be hidden, with every
    row since, when the volume is mounted back. The store stays down, whatever the path holds
    meanwhile (here a store another process made), until the volume is back."""
    volume, data = tmp_path / "volume", tmp_path / "data"
    data.mkdir()
    with mounted(volume):
        bind(volume, data)
        path = data / "store.db"
        store = open_store(f"sqlite:///{path}")
        before, after = records(3), records(4)
        try:
            store.write_predictions(before)
            subprocess.run(["umount", "-l", data], check=True)
            open_store(f"sqlite:///{path}").close()  # another process, started meanwhile
            for _ in range(3):
                with pytest.raises(StoreUnavailable) as refused:
                    store.write_predictions(records(1))
            with pytest.raises(StoreUnavailable, match="is not mounted: waiting for it"):
                store.check_writable()
            assert str(refused.value) == (
                "the volume holding the SQLite file store.db is not mounted: waiting for it"
            )
            assert ids_in(path) == set()
            path.unlink()
            bind(volume, data)  # the volume back: its own file again
            store.write_predictions(after)
        finally:
            store.close()
            subprocess.run(["umount", "-l", data], capture_output=True)
        assert ids_in(volume / "store.db") == {r.id for r in before + after}
    logged = [r for r in caplog.records if "no longer mounted" in r.getMessage()]
    assert len(logged) == 1  # once an outage, not at each retry


def test_a_volume_mounted_over_the_folder_takes_the_file_with_every_row(tmp_path: Path) -> None:
    """An empty volume mounted over the data folder while serving: the file is rebuilt on it
    from the copy still open. Unmounting that volume later is, to the store, its volume gone:
    it waits for it (it does not go back to the older file under it)."""
    folder = tmp_path / "data"
    path = folder / "store.db"
    folder.mkdir()
    store = open_store(f"sqlite:///{path}")
    before, after = records(3), records(4)
    try:
        store.write_predictions(before)
        with mounted(folder):
            store.write_predictions(after)
            assert ids_in(path) == {r.id for r in before + after}
        with pytest.raises(StoreUnavailable, match="is not mounted: waiting for it"):
            store.write_predictions(records(1))
        assert ids_in(path) == {r.id for r in before}
    finally:
        store.close()


def test_a_read_after_the_file_is_removed_does_not_make_an_empty_file_that_loses_the_rows(
    tmp_path: Path,
) -> None:
    """A new pooled connection (two reads at once) opened after `rm store.db*` must not create
    an empty file at the path: the next write would take it for a replacement and lose every
    row written before."""
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}")
    before, after = records(30), records(20)
    try:
        store.write_predictions(before)
        remove_store_files(tmp_path)
        # The pooled connection busy: the read opens a new one.
        with store.engine.connect(), pytest.raises(StoreUnavailable, match="read predictions"):
            store.get_predictions([before[0].id])
        assert not path.exists()
        store.write_predictions(after)
    finally:
        store.close()
    assert ids_in(path) == {r.id for r in before + after}


def test_an_empty_file_put_at_the_path_is_taken_for_a_removed_one(tmp_path: Path) -> None:
    """An empty database at the path (made by any process opening the missing file) is no
    restored backup: the store rebuilds the file from the one it holds open."""
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}")
    before, after = records(30), records(20)
    try:
        store.write_predictions(before)
        remove_store_files(tmp_path)
        with sqlite3.connect(path) as other:  # another process opens the path
            other.execute("PRAGMA journal_mode=WAL")
        store.write_predictions(after)
    finally:
        store.close()
    assert ids_in(path) == {r.id for r in before + after}


def test_a_rebuild_under_way_in_another_process_does_not_block_this_one(tmp_path: Path) -> None:
    """Two processes on one file each rebuild into a copy of their own (a fixed name made one
    fail, or both write into one copy)."""
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}")
    before, after = records(10), records(10)
    try:
        store.write_predictions(before)
        remove_store_files(tmp_path)
        (tmp_path / "store.db.rebuilding").mkdir()  # the other process's copy, in the way
        store.write_predictions(after)
    finally:
        store.close()
    assert ids_in(path) == {r.id for r in before + after}


def test_a_file_name_with_uri_characters_is_opened_as_that_file(tmp_path: Path) -> None:
    """The store's connections open the file through a URI (``mode=rw``): a name with the
    characters a URI gives meaning to is still that file, and no other is made."""
    folder = tmp_path / "data 100%"
    folder.mkdir()
    path = folder / "st#re 1.db"
    store = open_store(f"sqlite:///{path}")
    written = records(5)
    try:
        store.write_predictions(written)
        assert set(store.get_predictions([r.id for r in written])) == {r.id for r in written}
    finally:
        store.close()
    assert ids_in(path) == {r.id for r in written}
    assert [p.name for p in folder.iterdir() if not p.name.startswith("st#re 1.db")] == []
