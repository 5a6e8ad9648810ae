"""``STEWARD_METRICS_DIR``: the folder where the workers of ``steward serve --workers N`` keep
their metric files (prometheus-client's multiprocess mode), claimed for one server.

A scrape reads every ``*.db`` in it, and a server deletes the metric files it finds there at its
start (a previous run's counts would add to its own): a folder holding another kind of ``*.db``
(a store's) is refused, and so is one another live server holds (its lock on ``LOCK_FILE``),
whose live files the deletion would corrupt.
"""

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from app.errors import StewardError

# The files prometheus-client's multiprocess mode writes: <type>[_<gauge mode>]_<pid>.db.
METRIC_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_[0-9]+\.db")
LOCK_FILE = "steward.lock"  # flock'ed by the server using the folder; not *.db: not read


@contextmanager
def metrics_dir(configured: Path | None) -> Iterator[Path]:
    """Where the workers keep their metric files: ``configured``, made if missing, locked for
    this server and emptied of a previous run's metric files (they would add to this run's
    counts; other files stay), or a temporary folder removed on the way out."""
    if configured is None:
        path = Path(tempfile.mkdtemp(prefix="steward-metrics-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    with _claim(configured):
        yield configured


def _claim(folder: Path) -> IO[str]:
    """Lock ``folder`` for this server, then empty it of a previous run's metric files; the lock
    holds while the returned file is open. Another server using it is refused: it would delete
    this one's live files, and scrapes would add both servers' counts."""
    if folder.exists() and not folder.is_dir():
        raise StewardError(f"STEWARD_METRICS_DIR: {folder} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        found = sorted(folder.glob("*.db"))
        others = [path.name for path in found if not METRIC_FILE.fullmatch(path.name)]
        if others:  # a scrape reads every *.db there; a store's file is not to be deleted
            raise StewardError(
                f"STEWARD_METRICS_DIR: {folder} holds files that are not metric files "
                f"({', '.join(others[:3])}): give the workers a folder of their own"
            )
        lock = (folder / LOCK_FILE).open("a+")
    except OSError as exc:
        raise _unusable(folder, exc) from exc
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip()
            raise StewardError(
                f"STEWARD_METRICS_DIR: {folder} is in use by another steward server "
                f"(pid {owner or 'unknown'}): give each server a folder of its own"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")  # named by the server refused
        lock.flush()
        for stale in sorted(folder.glob("*.db")):  # locked: none is another server's
            if METRIC_FILE.fullmatch(stale.name):
                stale.unlink()
        with tempfile.TemporaryFile(dir=folder):  # the workers will write here
            pass
    except OSError as exc:
        lock.close()
        raise _unusable(folder, exc) from exc
    except BaseException:
        lock.close()
        raise
    return lock


def _unusable(folder: Path, exc: OSError) -> StewardError:
    return StewardError(
        f"STEWARD_METRICS_DIR: cannot use {folder} for the workers' metrics: {exc.strerror or exc}"
    )
