"""Retention of the prediction log: by age (STEWARD_RETENTION_SECONDS) and/or by row count
(STEWARD_RETENTION_MAX_ROWS), enforced in the background.

A pass deletes the oldest rows (by ``ix_predictions_created_at``) in transactions of at most
``batch_size`` predictions, each with the shadow rows of those predictions, queued on the
store's write lock like the log writer's batches. Between two batches it rests as long as the
last one took, so the log writer always has the lock at least half the time, however large the
backlog. Labelled rows are deleted like the others: the age setting is refused below the live
quality window (app/settings.py). Quarantined rows (``prediction_quarantine``) older than the
age are deleted too; the row count does not apply to them. The count keeps the rows made since
the oldest of the newest ``max_rows``: rows made in the same instant as that one stay with it.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.exc import SQLAlchemyError

from app.errors import StoreUnavailable
from app.metrics import Metrics
from app.periodic import Periodic
from app.settings import Settings
from app.store.schema import as_utc, predictions, quarantine, shadow_predictions
from app.store.sql import SqlStore

logger = logging.getLogger(__name__)

TABLES = (predictions.name, shadow_predictions.name, quarantine.name)
_IN_CHUNK = 500  # ids per IN (...): well under any driver's limit on parameters


@dataclass
class RetentionPass:
    """What one pass deleted, per table; ``stopped`` if the server closed before it was done."""

    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    batches: int = 0
    stopped: bool = False


class Retention:
    """Deletes what the retention settings no longer keep, every interval, off the loop."""

    def __init__(self, settings: Settings, store: SqlStore, metrics: Metrics) -> None:
        self.max_age = settings.retention_seconds
        self.max_rows = settings.retention_max_rows
        self.batch_size = settings.retention_batch_size
        self.store = store
        self.metrics = metrics
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # one pass at a time
        self._periodic = Periodic(
            "prediction-log retention", settings.retention_interval_seconds, self._round
        )

    @property
    def enabled(self) -> bool:
        return self.max_age is not None or self.max_rows is not None

    def start(self) -> None:
        """Start the periodic passes on the running event loop (nothing when retention is off)."""
        if self.enabled:
            self._periodic.start()

    async def close(self) -> None:
        """Stop; a pass under way stops after its current batch, before this returns."""
        self._stopping.set()
        await self._periodic.close()
        await asyncio.to_thread(self._wait_idle)

    def _wait_idle(self) -> None:
        with self._lock:
            pass

    def run_pass(self, now: datetime | None = None) -> RetentionPass:
        """One pass, to the end (blocking; the periodic work runs it in a thread)."""
        now = now or datetime.now(UTC)
        done = RetentionPass()
        with self._lock:
            if self.max_age is not None:
                cutoff = now - timedelta(seconds=self.max_age)
                self._delete_predictions(done, cutoff)
                self._delete_quarantined(done, cutoff)
            if self.max_rows is not None:
                kept_from = self._newest_kept(self.max_rows)
                if kept_from is not None:
                    self._delete_predictions(done, kept_from)
        return done

    async def _round(self) -> None:
        try:
            done = await asyncio.to_thread(self.run_pass)
        except StoreUnavailable as exc:
            # The log's own retry reports an outage; retention just tries again next round.
            logger.warning("prediction-log retention skipped this round: %s", exc)
            return
        if any(done.deleted.values()):
            logger.info(
                "prediction-log retention deleted %s in %d batches",
                ", ".join(f"{n} {table}" for table, n in done.deleted.items() if n),
                done.batches,
            )

    def _delete_predictions(self, done: RetentionPass, cutoff: datetime) -> None:
        """The predictions made before ``cutoff``, oldest first, with their shadow rows."""
        p = predictions.c
        query = select(p.id).where(p.created_at < cutoff).order_by(p.created_at)

        def batch(conn: Connection) -> dict[str, int]:
            ids = conn.execute(query.limit(self.batch_size)).scalars().all()
            return {
                predictions.name: _delete_in(conn, predictions, "id", ids),
                shadow_predictions.name: _delete_in(conn, shadow_predictions, "prediction_id", ids),
            }

        self._in_batches(done, predictions.name, batch)

    def _delete_quarantined(self, done: RetentionPass, cutoff: datetime) -> None:
        """The rows quarantined before ``cutoff``, oldest first."""
        q = quarantine.c
        oldest = select(q.seq).where(q.quarantined_at < cutoff).order_by(q.seq)

        def batch(conn: Connection) -> dict[str, int]:
            chosen = oldest.limit(self.batch_size).scalar_subquery()
            return {
                quarantine.name: conn.execute(delete(quarantine).where(q.seq.in_(chosen))).rowcount
            }

        self._in_batches(done, quarantine.name, batch)

    def _in_batches(
        self, done: RetentionPass, table: str, batch: Callable[[Connection], dict[str, int]]
    ) -> None:
        """``batch`` (deletes at most ``batch_size`` rows of ``table``, and what goes with
        them; returns the counts per table) in one transaction at a time, until one deletes
        fewer than ``batch_size``. Between two, a rest as long as the last one took: the log
        writer has the store's write lock at least half the time. Stops (``done.stopped``)
        between batches when the server closes."""
        while True:
            if self._stopping.is_set():
                done.stopped = True
                return
            started = time.monotonic()
            with self.store.transaction("apply retention") as conn:
                counts = batch(conn)
            done.batches += 1 if counts[table] else 0
            for name, rows in counts.items():
                self._count_deleted(done, name, rows)
            if counts[table] < self.batch_size:
                return
            self._stopping.wait(time.monotonic() - started)  # the writer's turn

    def _newest_kept(self, max_rows: int) -> datetime | None:
        """When the oldest of the newest ``max_rows`` predictions was made (None: there are no
        more than that). A time, not a number of rows to delete: replicas that run passes at
        once on one store agree on it, and none deletes a row the others keep.

        OFFSET walks the created_at index over ``max_rows`` entries: O(max_rows), kept on
        purpose. It is one read per pass, outside any write transaction (no lock the writer
        waits for), measured at about 45 ms (SQLite) and 100 ms (PostgreSQL) for a million
        kept rows; a cached or keyset bound would have to be kept right under deletes by
        other replicas, for a saving of tens of milliseconds a minute."""
        p = predictions.c
        query = select(p.created_at).order_by(p.created_at.desc()).offset(max_rows - 1)
        try:
            with self.store.engine.connect() as conn:
                return as_utc(conn.execute(query.limit(1)).scalar())
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"prediction store failed to read predictions: {exc}") from exc

    def _count_deleted(self, done: RetentionPass, table: str, rows: int) -> None:
        if rows:
            done.deleted[table] += rows
            self.metrics.retention_deleted.labels(table).inc(rows)


def _delete_in(conn: Connection, table: Table, column: str, ids: Sequence[str]) -> int:
    """Delete the rows of ``table`` whose ``column`` is one of ``ids``; how many were."""
    deleted = 0
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        deleted += conn.execute(delete(table).where(table.c[column].in_(chunk))).rowcount
    return deleted
