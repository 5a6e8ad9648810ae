"""The prediction log's writer: acknowledged rows go to the store in batches, off the loop.

Requests append rows and return at once; one background thread writes whatever has gathered
as one transaction (group commit), so no request waits on a disk sync. A row waits at most
``flush_interval`` seconds before its write starts (sooner when a batch is full, or someone waits
for it), which bounds what a crash can lose. ``close`` drains every acknowledged row before it
returns.

A failed batch is either the store failing or rows it refuses, and the writer tells them apart:

- the store is down (an outage error: connection, lock, disk; or its write probe
  ``check_writable``, which inserts a prediction of its own, fails): the batch is kept and
  retried with backoff, ``last_error`` says why, and appends beyond ``max_pending`` are refused
  (503) rather than acknowledged and lost. While the store is merely behind, ``put`` makes
  requests wait for room instead: in line, each woken by the writer when the rows it wrote
  make room for that request's rows, which the writer appends for it.
- the store works but refused the rows (RowsRefused, and the probe succeeds): the batch is split
  in halves, down to single rows; every row the store takes is written, in order, and a single
  row it refuses is quarantined: a safe rendering goes to ``prediction_quarantine``, an error is
  logged (id, model, version, reason; never the values), and
  ``steward_prediction_log_rejected_rows_total`` counts it. It counts as done, so nothing waits
  for it, and the rows behind it are written as usual.
"""

import asyncio
import contextlib
import logging
import reprlib
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

from app.errors import StoreUnavailable
from app.metrics import Metrics
from app.store.base import (
    PredictionRecord,
    PredictionStore,
    QuarantinedPrediction,
    RowsRefused,
)

logger = logging.getLogger(__name__)

RETRY_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
REASON_CHARS = 300
ROW_REPR_CHARS = 4000


class LogFull(StoreUnavailable):
    """``max_pending`` rows are already waiting for the store."""


class StoreDown(Exception):
    """The store is down (an outage error, or its write probe failed): keep every row, retry."""


@dataclass(eq=False)
class _Waiter:
    """A ``put`` waiting in line for room; the writer thread decides its outcome, then wakes it."""

    records: Sequence[PredictionRecord]
    woken: "asyncio.Future[None]"
    refusal: StoreUnavailable | None = None

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody is waiting
            self.woken.get_loop().call_soon_threadsafe(_resolve, self.woken)


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():  # its put was cancelled meanwhile
        future.set_result(None)


class PredictionLog:
    def __init__(
        self,
        store: PredictionStore,
        metrics: Metrics,
        *,
        batch_size: int = 1000,
        max_pending: int = 100_000,
        flush_interval: float = 0.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.flush_interval = flush_interval
        self.last_error: str | None = None  # set while the store is down, not for a bad row
        self._pending: deque[PredictionRecord] = deque()
        # Pending ids, each with the count of rows appended up to and including it.
        self._pending_ids: dict[str, int] = {}
        # Served ids with pending shadow rows, each with the count up to its last shadow row.
        self._pending_shadows: dict[str, int] = {}
        self._appended = 0
        self._done = 0  # rows written or quarantined, always the oldest appended ones
        # When rows were appended: (count up to the last row of one append, monotonic time).
        self._appended_at: deque[tuple[int, float]] = deque()
        self._hurry_upto = 0  # rows someone waits for (flush): written without the interval
        self._closing = False
        self._abandoned = False  # closed, and its time to write the rest ran out: stop retrying
        self._waiters: deque[_Waiter] = deque()  # puts waiting for room, oldest first
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
            self._take(records)

    async def put(self, records: Sequence[PredictionRecord], wait: float) -> None:
        """``append`` with backpressure: a log that is full only because the writer is behind
        (the store takes writes) gets up to ``wait`` seconds to make room, so a burst slows
        down instead of failing. Waiting puts are served in order: the writer appends their
        rows as the rows it writes make room, and wakes them. A failing store or a closing log
        is refused at once, as ``append`` does, waiting puts included."""
        with self._cond:
            try:
                self._take(records)
                return
            except LogFull:
                if self.last_error is not None or wait <= 0 or len(records) > self.max_pending:
                    raise
            waiter = _Waiter(records, asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await waiter.woken
        finally:  # timed out or cancelled: leave the line, unless the writer took the rows
            with self._cond:
                still_waiting = waiter in self._waiters
                if still_waiting:
                    self._waiters.remove(waiter)
                    self._admit_waiters()  # the ones behind it may fit now
        if still_waiting:
            raise self._full()
        if waiter.refusal is not None:
            raise waiter.refusal

    def _take(self, records: Sequence[PredictionRecord]) -> None:
        """Append ``records`` now or refuse them (called with the lock held). Room goes to
        waiting puts first: a newcomer does not pass them."""
        if self._closing:
            raise StoreUnavailable("the prediction log is shutting down")
        if self._waiters or len(self._pending) + len(records) > self.max_pending:
            raise self._full()
        self._extend(records)

    def _full(self) -> LogFull:
        return LogFull(
            f"the prediction store is behind by {len(self._pending)} rows"
            + (f" ({self.last_error})" if self.last_error else "")
        )

    def _extend(self, records: Sequence[PredictionRecord]) -> None:
        self._pending.extend(records)
        if self.flush_interval > 0:
            self._appended_at.append((self._appended + len(records), time.monotonic()))
        for record in records:
            self._appended += 1
            self._pending_ids[record.id] = self._appended
            if record.shadow_of is not None:
                self._pending_shadows[record.shadow_of] = self._appended
        self.metrics.log_pending.set(len(self._pending))
        self._cond.notify()

    def _admit_waiters(self) -> None:
        """Room was made: append the rows of waiting puts for them, oldest first, while they
        fit, and wake each (called with the lock held, by the writer)."""
        while self._waiters and (
            len(self._pending) + len(self._waiters[0].records) <= self.max_pending
        ):
            waiter = self._waiters.popleft()
            self._extend(waiter.records)
            waiter.wake()

    def _refuse_waiters(self, refusal: Callable[[], StoreUnavailable]) -> None:
        """Refuse every waiting put, each with an error of its own (requests annotate them)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.refusal = refusal()
            waiter.wake()

    def flush_if_pending(self, ids: Collection[str], timeout: float = 10.0) -> None:
        """Wait until none of ``ids``, nor any shadow row of them, is still waiting to be
        written (feedback labels both).

        Rows are written in order, so this waits for the rows up to the last of those only,
        not for the whole backlog. While the store is down it does not wait: StoreUnavailable
        at once (feedback answers 503 with Retry-After rather than hold the client).
        """
        with self._cond:
            target = max(
                (max(self._pending_ids.get(i, 0), self._pending_shadows.get(i, 0)) for i in ids),
                default=0,
            )
        if target:
            self._wait_written(target, timeout, while_down=False)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every row appended so far is written (or quarantined); StoreUnavailable on
        timeout."""
        with self._cond:
            target = self._appended
        self._wait_written(target, timeout)

    def _wait_written(self, target: int, timeout: float, *, while_down: bool = True) -> None:
        def settled() -> bool:
            return self._done >= target or (not while_down and self.last_error is not None)

        with self._cond:
            if target > self._hurry_upto:
                self._hurry_upto = target
                self._cond.notify_all()  # the writer, waiting out its flush interval
            if not self._cond.wait_for(settled, timeout) or self._done < target:
                raise StoreUnavailable(
                    "the prediction store did not take pending rows in time"
                    + (f" ({self.last_error})" if self.last_error else "")
                )

    def close(self, timeout: float = 30.0) -> int:
        """Stop accepting rows, write every pending one (waiting up to ``timeout``); the
        number of acknowledged rows left unwritten (0: nothing lost)."""
        with self._cond:
            self._closing = True
            self._refuse_waiters(lambda: StoreUnavailable("the prediction log is shutting down"))
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:  # a writer still retrying a store that is down gives up: nobody waits
            self._abandoned = True
            self._cond.notify_all()
        unwritten = len(self._pending)  # the writer may still be at it: one reading
        if unwritten:
            self.metrics.log_dropped.inc(unwritten)
            logger.error(
                "prediction log closed with %d acknowledged rows unwritten: %s",
                unwritten,
                self.last_error,
            )
        return unwritten

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closing)
                if not self._pending:
                    return
                self._wait_flush_interval()
                batch = list(islice(self._pending, self.batch_size))
            try:
                refusal = self._write(batch)
                if refusal is not None:
                    self._isolate(batch, refusal)
            except StoreDown as exc:  # keep the rest of the batch; retry until the store is back
                failures += 1
                with self._cond:
                    self.last_error = str(exc)
                    self._refuse_waiters(self._full)
                    self._cond.notify_all()  # flush_if_pending does not wait for a store down
                self.metrics.count_error(None, "store")
                logger.warning(
                    "prediction log write failed (%d rows kept): %s", self.pending, self.last_error
                )
                with self._cond:
                    delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
                    self._cond.wait_for(lambda: self._abandoned, delay)
                    if self._abandoned:
                        return
                continue
            failures = 0
            self.last_error = None

    def _wait_flush_interval(self) -> None:
        """Let rows gather until the oldest pending one has waited ``flush_interval``, unless
        a batch is full, puts wait for room, someone waits for the rows, or the log closes
        (called with the lock held, rows pending)."""
        if not self._appended_at:  # flush_interval is 0
            return
        due = self._appended_at[0][1] + self.flush_interval
        self._cond.wait_for(
            lambda: (
                self._closing
                or len(self._pending) >= self.batch_size
                or bool(self._waiters)
                or self._hurry_upto > self._done
            ),
            due - time.monotonic(),
        )

    def _write(self, rows: Sequence[PredictionRecord]) -> Exception | None:
        """Write ``rows`` in one transaction: None when written; the refusal when the store
        refused them while it works; StoreDown when it does not work."""
        try:
            self.store.write_predictions(rows)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable) and not isinstance(exc, RowsRefused):
                raise StoreDown(str(exc)) from exc  # connection, lock, disk: not the rows
            self._probe()
            return exc
        self._complete(rows, written=True)
        return None

    def _isolate(self, rows: Sequence[PredictionRecord], refusal: Exception) -> None:
        """A working store refused ``rows``: write the ones it takes, in order, and quarantine
        each single row it refuses."""
        if len(rows) == 1:
            self._quarantine(rows[0], refusal)
            return
        middle = len(rows) // 2
        for half in (rows[:middle], rows[middle:]):
            refused = self._write(half)
            if refused is not None:
                self._isolate(half, refused)

    def _probe(self) -> None:
        """Raise StoreDown unless the store takes a write of its own now."""
        try:
            self.store.check_writable()
        except Exception as exc:
            raise StoreDown(str(exc)) from exc

    def _quarantine(self, record: PredictionRecord, error: Exception) -> None:
        reason = _reason(error)
        row = QuarantinedPrediction(
            id=record.id,
            model=record.model,
            version=record.version,
            created_at=record.created_at,
            reason=reason,
            row_repr=render(record),
            at=datetime.now(UTC),
        )
        try:
            self.store.quarantine(row)
            kept = "kept in prediction_quarantine"
        except Exception as exc:
            self._probe()  # the store went away: the row stays pending, isolated again later
            kept = f"not kept: the quarantine table refused it too ({_reason(exc)})"
        logger.error(
            "prediction %s of %s v%s quarantined, the store refuses it: %s; %s "
            "(runbook: docs/operations.md#stewardpredictionsquarantined)",
            record.id,
            record.model,
            record.version,
            reason,
            kept,
        )
        self.metrics.log_rejected.inc()
        self._complete([record], written=False)

    def _complete(self, rows: Sequence[PredictionRecord], *, written: bool) -> None:
        """``rows`` (the oldest pending ones) are written or quarantined: nobody waits on them."""
        with self._cond:
            for record in rows:
                self._pending.popleft()
                self._done += 1
                if self._pending_ids.get(record.id) == self._done:  # not a later row's, same id
                    del self._pending_ids[record.id]
                served = record.shadow_of
                if served is not None and self._pending_shadows.get(served) == self._done:
                    del self._pending_shadows[served]
            while self._appended_at and self._appended_at[0][0] <= self._done:
                self._appended_at.popleft()
            self.metrics.log_pending.set(len(self._pending))
            if written:
                self.metrics.log_written.inc(len(rows))
            self._admit_waiters()
            self._cond.notify_all()


class _RowRepr(reprlib.Repr):
    """``repr`` with every part cut short; integers too long to print are described."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist = 4, 100, 20
        self.maxstring, self.maxlong, self.maxother = 200, 60, 200

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 1024:  # slow to print, and past 4300 digits repr() raises
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_ROW_REPR = _RowRepr()


def render(record: PredictionRecord) -> str:
    """A rendering of a row that any store can hold: ASCII, bounded, never raising."""
    try:
        text = _ROW_REPR.repr({"inputs": record.inputs, "output": record.output})
    except Exception as exc:  # a value whose __repr__ fails
        text = f"<not renderable: {type(exc).__name__}>"
    return _ascii(text, ROW_REPR_CHARS)


def _reason(error: BaseException) -> str:
    """Why the store refused a row, without its values: the error's type and first line."""
    lines = str(error).strip().splitlines()
    return _ascii(f"{type(error).__name__}: {lines[0] if lines else ''}", REASON_CHARS)


def _ascii(text: str, limit: int) -> str:
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."
