"""Feedback for a prediction that another process has not written yet: wait for it, bounded.

A prediction id is usable for feedback as soon as the client has it, but its row is written by
the process that served it. Another worker or replica keeps it in its prediction log's buffer
for up to STEWARD_LOG_FLUSH_INTERVAL_SECONDS, plus the time of a write (longer while the store
is down). Feedback that reaches a different process in that time finds no row. That process
cannot flush another one's buffer (app/feedback.py flushes its own), so an id still missing
whose issue time (app/ids.py) is recent is looked up again, first after ``FIRST_POLL_SECONDS``,
then at intervals doubling up to ``LONGEST_POLL_SECONDS``. The lookups stop when every such id
has appeared or its issue time plus the wait has passed; the ids still missing then are unknown
(404) as before. Each lookup runs in a thread, and the waiting between them is an
``anyio.sleep`` on the event loop, so no thread is held while waiting.

Only the id's own timestamp decides, and a client can forge young ids. So the wait is bounded
three ways, whatever the client sends:
- it happens only where another process can hold the row (``shared``: more than one worker, or
  a database that replicas may share); one process on its own SQLite file has flushed its own
  buffer already, and an id it does not find is unknown at once;
- at most ``max_waiting`` requests of this process wait at once (a small share of
  STEWARD_MAX_CONCURRENCY, ``waiting_bound``): a request beyond that does not wait, so forged
  feedback cannot take the slots /predict needs;
- a request waits for its first ``MAX_IDS`` young ids only, and the backoff keeps a 2 s wait to
  about seven lookups.
An id from before the wait, one from more than ``CLOCK_SKEW_SECONDS`` in the future, or one of
another form (not made by ``new_ids``) is unknown at once.
"""

import time
from collections.abc import Collection, Sequence

import anyio
import anyio.to_thread

from app.ids import issued_at
from app.settings import Settings
from app.store import PredictionStore

FIRST_POLL_SECONDS = 0.05
"""Before the first lookup: the default flush interval, so a row is found soon after its write."""

LONGEST_POLL_SECONDS = 0.5
"""The interval between lookups doubles up to this: a long wait makes a handful of them."""

MAX_IDS = 100
"""Young ids one request waits for (its first ones); the rest are unknown at once if missing."""

WAITING_SHARE = 8
"""One request in this many of STEWARD_MAX_CONCURRENCY may be waiting (at least one)."""

CLOCK_SKEW_SECONDS = 1.0
"""How far ahead of this host's clock another host's may be: an id issued up to this far in
the future still waits (for the wait after its issue time)."""


def young(ids: Collection[str], wait: float, now: float) -> dict[str, float]:
    """The young ones among ``ids`` (issued in (now - wait, now + skew]), each with the end of
    its wait: its issue time + ``wait`` (Unix seconds)."""
    ends = {}
    for prediction_id in ids:
        issued = issued_at(prediction_id)
        if issued is not None and now - wait < issued <= now + CLOCK_SKEW_SECONDS:
            ends[prediction_id] = issued + wait
    return ends


def waiting_bound(max_concurrency: int) -> int:
    """How many feedback requests of one process may wait at once."""
    return max(1, max_concurrency // WAITING_SHARE)


class LateRows:
    """The bounded wait of one process for rows another process may still hold."""

    def __init__(self, store: PredictionStore, wait: float, shared: bool, max_waiting: int) -> None:
        """``wait``: how long after its issue an id is looked for (0: never); ``shared``:
        whether another process can hold a row of this store; ``max_waiting``: requests that
        may wait at once."""
        self.store = store
        self.wait = wait if shared else 0.0
        self.max_waiting = max_waiting
        self.waiting = 0  # changed on the event loop only

    @classmethod
    def for_settings(cls, store: PredictionStore, settings: Settings) -> "LateRows":
        """Another process can hold a row when there are several workers, or when the store is
        a database that other replicas may use (STEWARD_DATABASE_URL)."""
        shared = settings.workers > 1 or bool(settings.database_url)
        return cls(
            store,
            settings.feedback_pending_wait_seconds,
            shared,
            waiting_bound(settings.max_concurrency),
        )

    async def arrived(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` (all missing from the store) that are among the first ``MAX_IDS``
        young ones and appear in the store before the last of their waits ends (a batch waits
        once); the empty set at once when none is young, the wait is off, or ``max_waiting``
        requests are waiting already."""
        if self.wait <= 0 or self.waiting >= self.max_waiting:
            return set()
        ends = dict(list(young(ids, self.wait, time.time()).items())[:MAX_IDS])
        if not ends:
            return set()
        self.waiting += 1
        try:
            return await self._poll(ends)
        finally:
            self.waiting -= 1

    async def _poll(self, ends: dict[str, float]) -> set[str]:
        # Counted on the monotonic clock from here: a step of the wall clock cannot stretch it.
        deadline = time.monotonic() + (max(ends.values()) - time.time())
        missing, found = set(ends), set[str]()
        pause = FIRST_POLL_SECONDS
        while missing and time.monotonic() < deadline:
            await anyio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, LONGEST_POLL_SECONDS)
            stored = await anyio.to_thread.run_sync(self.store.get_predictions, missing)
            found |= stored.keys()
            missing -= stored.keys()
        return found
