"""The SQLite file under a store: noticing it removed or replaced while the store serves.

A process keeps writing into a file it has open after the file was unlinked: every commit
succeeds, into an inode nobody will read again, and the rows vanish at the next restart. So
before each write transaction the store compares the file at its path with the one it opened
(device and inode). When they differ the store is down (StoreUnavailable: the log keeps its rows
and retries) until ``ensure`` makes the path whole again:

- the volume the file was on is unmounted (where it was mounted is a bare mount point now,
  as while an operator runs fsck): whatever the path holds, the store stays down until a volume
  is mounted there again. Nothing is written under the bare mount point: a volume mounted back
  would hide it, with every row written since.
- the path holds no file (removed, or another volume mounted over its folder): the
  removed file is still open here, so it is copied with SQLite's online backup (every row
  written so far, whatever the write-ahead log still held) into a new file at the path, and the
  store's connections move to it. Where the copy cannot be made (a read-only or full disk), it
  stays down, tries again at the next write, and takes up its own file again if it comes back.
- the path holds another file (put there by hand, a restored backup): the store moves to it,
  creating the tables it lacks; rows written to the old file since the swap stay in that one.
  An empty database there (no predictions table: any process that opened the missing path made
  it) is no backup: it is taken for a removed file and rebuilt over.

Once the file exists the store's connections open it without creating it (``open_existing``):
a read that opens a new connection while the file is gone fails, rather than making an empty
file at the path.
"""

import contextlib
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import StoreUnavailable

logger = logging.getLogger(__name__)

Identity = tuple[int, int]  # (st_dev, st_ino)


def identity(path: Path) -> Identity | None:
    """The file at ``path`` (None: no file there); StoreUnavailable if it cannot be looked at."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot look at the SQLite file {path.name}: {exc.strerror}"
        ) from exc
    return status.st_dev, status.st_ino


class SqliteFile:
    """The store's SQLite file, held open (the anchor) so that a removed one can be copied."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._anchor = _connect(path)
        self._identity = identity(path)
        self._mount_point = _mount_point(path.parent)
        self._logged: str | None = None  # the outage logged, once, not at each retry

    def ensure(self, disconnect: Callable[[], None], prepare: Callable[[], None]) -> None:
        """Return if the file at the path is the one open; else make it so, or raise
        StoreUnavailable. ``disconnect`` closes the store's connections to the old file,
        ``prepare`` creates the tables the new one lacks."""
        now = identity(self.path)
        if now is not None and now == self._identity:
            self._logged = None
            return
        if not os.path.ismount(self._mount_point):
            self._log_once(
                "the volume holding the SQLite file %s is no longer mounted at %s: the store is "
                "down until it is back, and writes nothing under the bare mount point (runbook: "
                "docs/operations.md#when-the-store-fails)",
                self.path,
                self._mount_point,
            )
            raise StoreUnavailable(
                f"the volume holding the SQLite file {self.path.name} is not mounted: waiting "
                "for it"
            )
        if now is not None and _holds_a_store(self.path):
            self._log_once(
                "the SQLite file %s was replaced by another file while serving: writing to the "
                "new one; rows written to the old one since the swap stay there",
                self.path,
            )
            disconnect()
        else:
            self._log_once(
                "the SQLite file %s is no longer at its path (removed, or its folder mounted "
                "over): rebuilding it from the copy still open (runbook: "
                "docs/operations.md#when-the-store-fails)",
                self.path,
            )
            self._rebuild(disconnect)
        self._move(prepare)

    def _log_once(self, message: str, *args: object) -> None:
        if self._logged != message:
            logger.error(message, *args)
        self._logged = message

    def close(self) -> None:
        self._anchor.close()

    def open_existing(self, _dialect: Any, _record: Any, cargs: list[Any], cparams: Any) -> None:
        """The engine's ``do_connect`` hook: open the file read-write, never create it."""
        cargs[:] = [_uri(self.path, "rw")]
        cparams["uri"] = True

    def _rebuild(self, disconnect: Callable[[], None]) -> None:
        # A name of its own: two processes on one file rebuild into two copies, and each
        # replaces the path atomically.
        copy: Path | None = None
        try:
            handle, name = tempfile.mkstemp(
                dir=self.path.parent, prefix=f"{self.path.name}.", suffix=".rebuilding"
            )
            os.close(handle)
            copy = Path(name)
            target = sqlite3.connect(copy)
            try:
                self._anchor.backup(target)
            finally:
                target.close()
        except (OSError, sqlite3.Error) as exc:
            if copy is not None:
                with contextlib.suppress(OSError):
                    copy.unlink(missing_ok=True)
            # The reason only: an OSError's text names the full path, and this message reaches
            # the 503 bodies of /predict and /feedback. The log has the detail.
            logger.warning("rebuilding the SQLite file %s failed: %s", self.path, exc)
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise StoreUnavailable(
                f"the SQLite file {self.path.name} is gone and cannot be rebuilt here: {reason}"
            ) from exc
        # Our connections to the removed file close first (the last one checkpoints its
        # write-ahead log into it); that log and its shared memory, if left at the path, belong
        # to the removed file: the new one must not find them.
        try:
            disconnect()
        except StoreUnavailable:
            copy.unlink(missing_ok=True)  # made again at the next try, with the rows since
            raise
        self._anchor.close()
        for leftover in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{leftover}")
        os.replace(copy, self.path)

    def _move(self, prepare: Callable[[], None]) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._anchor.close()
        try:
            self._anchor = _connect(self.path)
        except sqlite3.Error as exc:
            logger.warning("opening the SQLite file %s failed: %s", self.path, exc)
            raise StoreUnavailable(
                f"cannot open the SQLite file {self.path.name}: {exc.__class__.__name__}"
            ) from exc
        prepare()
        self._identity = identity(self.path)
        self._mount_point = _mount_point(self.path.parent)
        self._logged = None
        logger.warning("the SQLite store writes to %s again", self.path)


def _mount_point(folder: Path) -> Path:
    """Where the file system holding ``folder`` is mounted (``/`` for the root's): the highest
    folder above it on the same device. (A bind mount of a folder on the same file system is not
    told apart: the walk goes on past it, to a mount point that stays.)"""
    folder = Path(os.path.realpath(folder))
    try:
        device = folder.stat().st_dev
        while folder.parent != folder and folder.parent.stat().st_dev == device:
            folder = folder.parent
    except OSError:  # a folder above that cannot be looked at: as if on the root file system
        return Path(folder.anchor)
    return folder


def _uri(path: Path, mode: str) -> str:
    return f"{Path(os.path.abspath(path)).as_uri()}?mode={mode}"


def _holds_a_store(path: Path) -> bool:
    """False for a database without the predictions table (an empty one made by opening the
    missing path); True for a store, or anything this cannot read (the caller's to judge)."""
    try:
        connection = sqlite3.connect(_uri(path, "ro"), uri=True)
        try:
            found = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'predictions'"
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.Error:
        return True
    return bool(found)


def _connect(path: Path) -> sqlite3.Connection:
    """A connection that has read the file once: it holds the file, its write-ahead log and
    shared memory open from now on, so a copy still sees them if they are removed."""
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
    return connection
