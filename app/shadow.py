"""Shadow predictions: the candidate predicts the rows production served, off the response path.

A request served by production while the model's traffic policy is ``shadow`` hands its rows
(and their prediction ids) to ``Shadows.submit``, which returns at once. The candidate's work is
not urgent, so it is gathered: every ``window`` seconds the requests queued for a candidate are
run together through the batcher (the candidate's own lane: one model call for all of them, each
request's rows still failing alone), and their outputs queued in the prediction log as shadow
predictions of those ids (``PredictionRecord.shadow_of``). The client's response never waits for
it and never carries it, and the loop pays one model call per window instead of one per request
(docs/performance.md has the measured cost).

The rows reach the candidate as production validated them when both versions have the same input
contract; otherwise the request body is validated again against the candidate's request model,
in the task, and a body it refuses is counted (``invalid_input``), not answered.

Nothing here may hurt the served path, so every resource is bounded and every failure is counted
in ``steward_shadow_failures_total{reason}`` instead of raised:

- ``skipped``: more than ``max_pending_rows`` rows are already waiting for the candidate (or,
  for a candidate with inputs of its own, more than MAX_PENDING_BODY_BYTES of request bodies);
- ``log_full``: the prediction log is over half full (the other half is for served rows);
- ``invalid_input`` / ``model_failure``: the candidate refused the rows or failed on them;
- ``late``: its served row was labelled before it was logged (counted by app/shadow_feedback.py,
  see ``settled``).

Feedback for a row whose shadow is still running waits for it on the event loop (``settled``,
bounded, holding no worker thread), so the label reaches both predictions in one transaction;
a served row labelled without its shadow, still running then, is counted ``late`` by the
feedback path, and that shadow stays unlabelled.
"""

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from app import logs
from app.batching import Batcher
from app.errors import StewardError, StoreUnavailable
from app.features import Row
from app.ids import new_ids
from app.loading import LoadedModel, RowOutput
from app.metrics import Metrics
from app.shadow_metrics import ShadowFailure
from app.store import PredictionLog, PredictionRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Job:
    """One request's rows for a candidate: ids served, rows (None: validate ``body`` again)."""

    ids: Sequence[str]
    rows: Sequence[Row] | None
    body: bytes


MAX_PENDING_BODY_BYTES = 64 * 1024 * 1024
"""Request bodies kept for candidates that validate them again: rows are bounded by
``max_pending_rows``, and a body can be large for its rows."""
DRAIN_SECONDS = 1.0
"""How long shutdown lets shadow work finish: it is best effort, and the shutdown budget is
for the acknowledged rows of the prediction log."""


class Shadows:
    """Runs shadow predictions in background tasks and tracks the ones not logged yet."""

    def __init__(
        self,
        batcher: "Batcher[LoadedModel, Row, RowOutput]",
        log: PredictionLog,
        metrics: Metrics,
        *,
        max_pending_rows: int,
        window: float = 0.02,
    ) -> None:
        self.batcher = batcher
        self.log = log
        self.metrics = metrics
        self.max_pending_rows = max_pending_rows
        self.window = window
        self._queued: dict[LoadedModel, list[_Job]] = {}  # waiting for their window to close
        self._timers: dict[LoadedModel, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._rows = 0  # rows submitted and not finished (event-loop thread only)
        self._bytes = 0  # request bodies kept for a candidate with inputs of its own
        self._same: dict[tuple[str, int, int], bool] = {}
        # Served ids whose shadow is not logged yet, and the candidate shadowing them.
        self._pending: dict[str, LoadedModel] = {}
        self._settled = asyncio.Condition()  # notified as shadows end; feedback waits on it
        # Versions whose failure was logged once; weakly, so an unloaded version can go.
        self._failing: weakref.WeakSet[LoadedModel] = weakref.WeakSet()

    @property
    def pending_rows(self) -> int:
        return self._rows

    def submit(
        self,
        served: LoadedModel,
        candidate: LoadedModel,
        ids: Sequence[str],
        rows: Sequence[Row],
        body: bytes,
    ) -> None:
        """Shadow ``rows`` (served by ``served`` under ``ids``) with ``candidate``, later.
        Never raises and never waits: a shadow that cannot be taken on is counted."""
        same_inputs = self._same_inputs(served, candidate)
        kept = 0 if same_inputs else len(body)
        if (
            self._rows + len(rows) > self.max_pending_rows
            or self._bytes + kept > MAX_PENDING_BODY_BYTES
        ):
            self.metrics.shadow.count_failure(candidate.metadata, "skipped", len(rows))
            return
        self._rows += len(rows)
        self._bytes += kept
        self._pending.update(dict.fromkeys(ids, candidate))
        job = _Job(ids, rows, b"") if same_inputs else _Job(ids, None, body)
        self._queued.setdefault(candidate, []).append(job)
        if candidate not in self._timers:
            loop = asyncio.get_running_loop()
            # Outside this request: the shadow runs for the requests of the whole window.
            self._timers[candidate] = loop.call_later(
                self.window, self._start, candidate, context=logs.detached()
            )

    def _same_inputs(self, served: LoadedModel, candidate: LoadedModel) -> bool:
        """Whether the candidate reads the inputs ``served`` validated (asked once per pair of
        versions: their features never change)."""
        key = (served.name, served.version, candidate.version)
        same = self._same.get(key)
        if same is None:
            same = self._same[key] = candidate.metadata.features == served.metadata.features
        return same

    def _start(self, candidate: LoadedModel) -> None:
        """The window closed: run the candidate's queued requests, all in the same loop turn,
        so that the batcher gathers them into one model call."""
        self._timers.pop(candidate, None)
        for job in self._queued.pop(candidate, []):
            task = asyncio.create_task(
                self._run(candidate, job.ids, job.rows, job.body),
                name=f"shadow:{candidate.name}:v{candidate.version}",
                context=logs.detached(),
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def settled(self, ids: Collection[str], timeout: float) -> dict[str, LoadedModel]:
        """Wait, on the event loop, until no shadow of ``ids`` is still running (at most
        ``timeout`` seconds). Returns the ids whose shadow is still running then, with the
        candidate shadowing them: feedback that labels one of those rows without its shadow
        counts it ``late`` (app/shadow_feedback.py)."""
        if self._pending.keys().isdisjoint(ids):
            return {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._settled:
                await self._settled.wait_for(lambda: self._pending.keys().isdisjoint(ids))
            return {}
        return {i: self._pending[i] for i in ids if i in self._pending}

    async def close(self, timeout: float = DRAIN_SECONDS) -> None:
        """Run what is queued now, let the shadows finish (up to ``timeout`` seconds), then
        cancel the rest."""
        for candidate, timer in list(self._timers.items()):
            timer.cancel()
            self._start(candidate)
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(
        self,
        candidate: LoadedModel,
        ids: Sequence[str],
        rows: Sequence[Row] | None,
        body: bytes,
    ) -> None:
        try:
            failure = await self._shadow(candidate, ids, rows, body)
        except Exception as exc:  # a bug of ours: logged, and the served path never sees it
            # The text may quote the rows' values (scikit-learn's do): at debug only.
            logger.error(
                "shadow %s v%d failed: %s", candidate.name, candidate.version, type(exc).__name__
            )
            logger.debug("shadow %s v%d failure", candidate.name, candidate.version, exc_info=True)
            failure = "model_failure"
        try:
            if failure is not None:
                self.metrics.shadow.count_failure(candidate.metadata, failure, len(ids))
        finally:
            self._rows -= len(ids)
            self._bytes -= len(body)
            for served_id in ids:
                self._pending.pop(served_id, None)
            async with self._settled:
                self._settled.notify_all()

    async def _shadow(
        self,
        candidate: LoadedModel,
        ids: Sequence[str],
        rows: Sequence[Row] | None,
        body: bytes,
    ) -> ShadowFailure | None:
        """Predict and log; the failure's reason, or None when the shadow rows were logged."""
        if rows is None:
            try:
                rows = candidate.rows(body)
            except StewardError:
                return "invalid_input"
            if len(rows) != len(ids):  # cannot happen for one body; never mislabel a row
                return "invalid_input"
        try:
            outputs = await self.batcher.run(candidate, list(rows))
        except Exception as exc:
            if candidate not in self._failing:  # once per version: a failing shadow is noisy
                self._failing.add(candidate)
                logger.warning(
                    "shadow %s v%d fails (counted in steward_shadow_failures_total): %s",
                    candidate.name,
                    candidate.version,
                    type(exc).__name__,
                )
                # The text may quote the rows' values (scikit-learn's do): at debug only.
                logger.debug("shadow %s v%d failure: %r", candidate.name, candidate.version, exc)
            return "model_failure"
        if self.log.pending + len(ids) > self.log.max_pending // 2:
            return "log_full"
        now = datetime.now(UTC)
        name, version, names = candidate.name, candidate.version, candidate.contract.names

        records = [
            PredictionRecord(
                shadow_id, name, version, now, names, row, label, probabilities, served_id
            )
            for shadow_id, served_id, row, (label, probabilities) in zip(
                new_ids(len(ids)), ids, rows, outputs, strict=True
            )
        ]
        try:
            self.log.append(records)
        except StoreUnavailable:
            return "log_full"
        self.metrics.shadow.count(candidate.metadata, len(records))
        return None
