"""Feedback for a prediction that another process has not written yet: wait for it, bounded.

A prediction id is usable for feedback as soon as the client has it, but its row is written by
the process that served it. Another worker or replica keeps it in its prediction log's buffer
for up to STEWARD_LOG_FLUSH_INTERVAL_SECONDS, plus the time of a write (longer while the store
is down). Feedback that reaches a different process in that time finds no row. That process
cannot flush another one's buffer (app/feedback.py flushes its own), so an id still missing
whose issue time (app/ids.py) is recent is looked up again every ``POLL_SECONDS``. The lookups
stop when every such id has appeared or its issue time plus the wait has passed; the ids still
missing then are unknown (404) as before. Each lookup runs in a thread, and the waiting between
them is an ``anyio.sleep`` on the event loop, so no thread is held while waiting.

Only the id's own timestamp decides, and a client can forge a young id. That costs the client
its own wait, no more than the wait plus ``CLOCK_SKEW_SECONDS``, during which its request holds
one slot of STEWARD_MAX_CONCURRENCY. An id from before the wait, one from more than
``CLOCK_SKEW_SECONDS`` in the future, or one of another form (not made by ``new_ids``) is
unknown at once.
"""

import time
from collections.abc import Collection

import anyio
import anyio.to_thread

from app.ids import issued_at
from app.store import PredictionStore

POLL_SECONDS = 0.05
"""Between two lookups: the default flush interval, so a row is found soon after its write."""

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


async def arrived(store: PredictionStore, ids: Collection[str], wait: float) -> set[str]:
    """Those of ``ids`` (all missing from the store) that are young and appear in the store
    before the last of their waits ends (a batch waits once); the empty set at once when none
    is young or ``wait`` is 0."""
    ends = young(ids, wait, time.time()) if wait > 0 else {}
    if not ends:
        return set()
    # Counted on the monotonic clock from here: a step of the wall clock cannot stretch it.
    deadline = time.monotonic() + (max(ends.values()) - time.time())
    missing, found = set(ends), set[str]()
    while missing and time.monotonic() < deadline:
        await anyio.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
        stored = await anyio.to_thread.run_sync(store.get_predictions, missing)
        found |= stored.keys()
        missing -= stored.keys()
    return found
