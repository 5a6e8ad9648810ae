"""The prediction log's writer: acknowledged rows go to the store in batches, off the loop.

Requests append rows and return at once; one background thread writes whatever has gathered
as one transaction (group commit), so no request waits on a disk sync. A failed batch is kept
and retried; while the store fails, appends beyond ``max_pending`` are refused (503) rather
than acknowledged and lost; while it is merely behind, ``put`` makes requests wait for room.
``close`` drains every acknowledged row before it returns.
"""

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Collection, Sequence
from itertools import islice

from app.errors import StoreUnavailable
from app.metrics import Metrics
from app.store.base import PredictionRecord, PredictionStore

logger = logging.getLogger(__name__)

RETRY_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
BACKPRESSURE_POLL_SECONDS = 0.002


class LogFull(StoreUnavailable):
    """``max_pending`` rows are already waiting for the store."""


class PredictionLog:
    def __init__(
        self,
        store: PredictionStore,
        metrics: Metrics,
        *,
        batch_size: int = 1000,
        max_pending: int = 100_000,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.last_error: str | None = None
        self._pending: deque[PredictionRecord] = deque()
        # Pending ids, each with the count of rows appended up to and including it.
        self._pending_ids: dict[str, int] = {}
        self._appended = 0
        self._written = 0
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def append(self, records: Sequence[PredictionRecord]) -> None:
        """Queue rows for writing; refuses (StoreUnavailable) instead of growing unbounded."""
        with self._cond:
            if self._closing:
                raise StoreUnavailable("the prediction log is shutting down")
            if len(self._pending) + len(records) > self.max_pending:
                raise LogFull(
                    f"the prediction store is behind by {len(self._pending)} rows"
                    + (f" ({self.last_error})" if self.last_error else "")
                )
            self._pending.extend(records)
            for record in records:
                self._appended += 1
                self._pending_ids[record.id] = self._appended
            self.metrics.log_pending.set(len(self._pending))
            self._cond.notify()

    async def put(self, records: Sequence[PredictionRecord], wait: float) -> None:
        """``append`` with backpressure: a log that is full only because the writer is behind
        (the store takes writes) gets up to ``wait`` seconds to make room, so a burst slows
        down instead of failing. A failing store is refused at once, as ``append`` does."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self.append(records)
                return
            except LogFull:
                if self.last_error is not None or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(BACKPRESSURE_POLL_SECONDS)

    def flush_if_pending(self, ids: Collection[str], timeout: float = 10.0) -> None:
        """Wait until none of ``ids`` is still waiting to be written (feedback needs them).

        Rows are written in order, so this waits for the rows up to the last of ``ids`` only,
        not for the whole backlog.
        """
        with self._cond:
            target = max((self._pending_ids.get(i, 0) for i in ids), default=0)
        if target:
            self._wait_written(target, timeout)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every row appended so far is written; StoreUnavailable on timeout."""
        with self._cond:
            target = self._appended
        self._wait_written(target, timeout)

    def _wait_written(self, target: int, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._written >= target, timeout):
                raise StoreUnavailable(
                    "the prediction store did not take pending rows in time"
                    + (f" ({self.last_error})" if self.last_error else "")
                )

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting rows, write every pending one (waiting up to ``timeout``)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._pending:
            logger.error(
                "prediction log closed with %d acknowledged rows unwritten: %s",
                len(self._pending),
                self.last_error,
            )

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closing)
                if not self._pending:
                    return
                batch = list(islice(self._pending, self.batch_size))
            try:
                self.store.write_predictions(batch)
            except Exception as exc:  # keep the batch; retry until the store takes it
                failures += 1
                self.last_error = str(exc)
                self.metrics.count_error(None, "store")
                logger.warning("prediction log write failed (%d rows kept): %s", len(batch), exc)
                with self._cond:
                    delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
                    self._cond.wait(delay)
                continue
            failures = 0
            self.last_error = None
            with self._cond:
                for record in batch:
                    self._pending.popleft()
                    self._pending_ids.pop(record.id, None)
                self._written += len(batch)
                self.metrics.log_pending.set(len(self._pending))
                self.metrics.log_written.inc(len(batch))
                self._cond.notify_all()
