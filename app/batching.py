"""Adaptive batching: concurrent requests for one model version share one model call.

scikit-learn pays most of a ``predict`` call in fixed overhead (input checks, pipeline steps),
so a call for 64 rows costs about what a call for one row does. Each served version gets a
lane: requests queue their rows on it, and one worker task per lane runs them.

The worker never waits on an empty lane: a lone request is run on the next turn of the event
loop, so a quiet server adds no latency. When a request arrives, the worker keeps the batch
open only while more requests keep arriving on the following loop turns, and closes it at
``max_rows`` rows or ``max_wait`` seconds, whichever comes first. While a batch runs, the next
one gathers. Results are split back per request, in order.

A model call runs on the event-loop thread when the lane's last call took at most
``inline_max`` seconds: for a small scikit-learn model that is cheaper than the hop to a worker
thread, and the loop is held for a bounded time. A slower model (or one not yet measured) runs
in a worker thread, and the loop keeps serving meanwhile.

If the model fails on a batch of several requests, each request is run again on its own, so
one request's bad rows fail that request only.

A lane is dropped when its version leaves memory: the requests queued on it still run, then its
worker ends.
"""

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio.to_thread

from app import logs

logger = logging.getLogger(__name__)

Key = TypeVar("Key")
Row = TypeVar("Row")
Out = TypeVar("Out")

# Runs a model on rows, returning one output per row; blocking.
Call = Callable[[Key, list[Row]], list[Out]]


class BatcherClosed(RuntimeError):
    """The batcher closed (shutdown) before this request's rows ran."""


@dataclass(eq=False)
class _Job(Generic[Row, Out]):
    rows: Sequence[Row]
    result: "asyncio.Future[list[Out]]"


@dataclass(eq=False)
class _Lane(Generic[Row, Out]):
    jobs: deque[_Job[Row, Out]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    worker: "asyncio.Task[None] | None" = None
    inline: bool = False  # run calls on the loop thread; decided by the last call's time
    dropped: bool = False  # run what is queued, then end


@dataclass(frozen=True)
class BatchStats:
    """What a batch held, for metrics: how many requests and rows, how long the call took."""

    requests: int
    rows: int
    seconds: float


class Batcher(Generic[Key, Row, Out]):
    """Runs ``call(key, rows)`` for queued requests of the same key in as few calls as it can."""

    def __init__(
        self,
        call: Call[Key, Row, Out],
        *,
        max_rows: int,
        max_wait: float,
        inline_max: float = 0.002,
        on_batch: Callable[[Key, BatchStats], None] | None = None,
    ) -> None:
        self.call = call
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.inline_max = inline_max
        self.on_batch = on_batch
        self._lanes: dict[Key, _Lane[Row, Out]] = {}
        self._draining: set[_Lane[Row, Out]] = set()  # dropped, still running queued requests
        # Dropped keys, remembered weakly: a request that took its key before the drop and
        # reaches run() after it gets a lane of its own that ends once it has run.
        self._dropped: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def keys(self) -> list[Key]:
        """The keys with an open lane."""
        return list(self._lanes)

    async def run(self, key: Key, rows: Sequence[Row]) -> list[Out]:
        """The outputs for ``rows``, computed in a batch with whatever else is queued for ``key``.

        Raises what ``call`` raised on these rows alone.
        """
        lane = self._lanes.get(key)
        if lane is None:
            lane = _Lane()
            if key in self._dropped:
                lane.dropped = True
                self._draining.add(lane)
            else:
                self._lanes[key] = lane
            # It serves later requests too: none of its lines is this request's.
            lane.worker = asyncio.create_task(
                self._work(key, lane), name=f"batcher:{key}", context=logs.detached()
            )
        job: _Job[Row, Out] = _Job(rows, asyncio.get_running_loop().create_future())
        lane.jobs.append(job)
        lane.wakeup.set()
        return await job.result

    def drop(self, key: Key) -> None:
        """Close ``key``'s lane: the requests queued on it still run, then its worker ends. A
        later request for ``key`` (one that took it before the drop) runs on a lane of its own,
        which ends after it. ``key`` must be weakly referenceable (a model version is): it is
        remembered as long as someone holds it. Callable from any thread."""
        lane = self._lanes.get(key)
        if lane is not None and lane.worker is not None:
            lane.worker.get_loop().call_soon_threadsafe(self._drop, key, lane)

    def _drop(self, key: Key, lane: _Lane[Row, Out]) -> None:
        self._dropped.add(key)
        if self._lanes.get(key) is lane:
            del self._lanes[key]
            self._draining.add(lane)
            lane.dropped = True
            lane.wakeup.set()

    async def close(self) -> None:
        """Stop every worker; requests still queued are failed (shutdown waits for none)."""
        lanes = [*self._lanes.values(), *self._draining]
        self._lanes, self._draining = {}, set()
        for lane in lanes:
            if lane.worker is not None:
                lane.worker.cancel()
        for lane in lanes:
            if lane.worker is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.worker
            for job in lane.jobs:
                if not job.result.done():
                    job.result.set_exception(BatcherClosed("the server is shutting down"))

    async def _work(self, key: Key, lane: _Lane[Row, Out]) -> None:
        while True:
            await lane.wakeup.wait()
            lane.wakeup.clear()
            while lane.jobs:
                batch = await self._gather(lane)
                try:
                    await self._run(key, lane, batch)
                except Exception as exc:  # never leave requests waiting on a dead worker
                    # The text may quote the rows' values (scikit-learn's do): at debug only.
                    logger.error(
                        "batch for %s failed outside the model call: %s", key, type(exc).__name__
                    )
                    logger.debug("batch for %s failure", key, exc_info=True)
                    for job in batch:
                        if not job.result.done():
                            job.result.set_exception(exc)
                # Let the requests just answered finish, and new ones queue, before the next.
                await asyncio.sleep(0)
            if lane.dropped:  # nothing more can queue on it
                break
        self._draining.discard(lane)

    async def _gather(self, lane: _Lane[Row, Out]) -> list[_Job[Row, Out]]:
        """Queued jobs up to ``max_rows`` rows; open for more only while more keep arriving."""
        batch = [lane.jobs.popleft()]
        rows = len(batch[0].rows)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_rows:
            if not lane.jobs:
                arrived = await self._next_turn(lane)
                if not arrived or time.monotonic() >= deadline:
                    break
                continue
            if rows + len(lane.jobs[0].rows) > self.max_rows:
                break
            job = lane.jobs.popleft()
            batch.append(job)
            rows += len(job.rows)
        return batch

    @staticmethod
    async def _next_turn(lane: _Lane[Row, Out]) -> bool:
        """Yield one event-loop turn; True if a request queued meanwhile."""
        await asyncio.sleep(0)
        return bool(lane.jobs)

    async def _run(self, key: Key, lane: _Lane[Row, Out], batch: list[_Job[Row, Out]]) -> None:
        batch = [job for job in batch if not job.result.done()]  # cancelled by disconnects
        if not batch:
            return
        rows = [row for job in batch for row in job.rows]
        try:
            outputs, seconds = await self._call(key, lane, rows)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].result.set_exception(exc)
                return
            for job in batch:  # find the request(s) the model fails on
                await self._run(key, lane, [job])
            return
        if self.on_batch is not None:
            self.on_batch(key, BatchStats(len(batch), len(rows), seconds))
        start = 0
        for job in batch:
            end = start + len(job.rows)
            if not job.result.done():
                job.result.set_result(outputs[start:end])
            start = end

    async def _call(
        self, key: Key, lane: _Lane[Row, Out], rows: list[Row]
    ) -> tuple[list[Out], float]:
        if lane.inline:
            outputs, seconds = self._timed(key, rows)
        else:
            outputs, seconds = await anyio.to_thread.run_sync(self._timed, key, rows)
        lane.inline = seconds <= self.inline_max
        return outputs, seconds

    def _timed(self, key: Key, rows: list[Row]) -> tuple[list[Out], float]:
        started = time.perf_counter()
        outputs = self.call(key, rows)
        return outputs, time.perf_counter() - started
