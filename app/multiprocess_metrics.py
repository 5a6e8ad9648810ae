"""What changes for the metrics when several workers serve (``steward serve --workers N``):
prometheus-client's multiprocess mode.

Each worker writes its values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``, which the
supervisor (app/cli/workers.py) sets before it spawns them: prometheus-client picks where values
live when it is first imported. A scrape, whichever worker answers it, reads every worker's
files: counters and histograms are summed (a dead worker's counts stay), each gauge is combined
by its ``multiprocess_mode`` (livesum, livemax, livemin: only live workers' values).

A gauge series cannot be removed in this mode (prometheus-client warns and keeps the file's
value), so a series that goes in one process is set here to a reading that means "gone" and
that the combination across workers, and the shipped PromQL, never mistake for a live value:
``GONE_READINGS``, used by every removal (``remove_series``). docs/metrics.md says what each
gauge reads under workers.

One process (the default) has none of this: values in memory, removed series gone.
"""

import contextlib

from prometheus_client import CollectorRegistry, Gauge, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

GONE_READINGS: dict[str, float] = {
    # 0/1 states, combined by livemax: 0 is "not here", and any live worker's 1 wins.
    "steward_model_info": 0.0,
    "steward_model_refused": 0.0,
    "steward_model_sklearn_version_mismatch": 0.0,
    "steward_model_runtime": 0.0,
    # The percent to the candidate under a mode no longer current (livemax): 0, none sent.
    "steward_model_traffic_percent": 0.0,
    # Scores of 0 and up (livemax): 0 is no drift seen, and never beats a live worker's score.
    "steward_feature_drift_psi": 0.0,
    "steward_feature_drift_ks": 0.0,
    # -1 is the status's own "not judged" (livemax: any judging worker's level wins).
    "steward_model_drift_status": -1.0,
    # livemin, the conservative reading: 2 is above any accuracy, so a worker without a reading
    # never lowers the others'; alone, it is filtered out by the shipped PromQL (``<= 1``).
    "steward_estimated_accuracy": 2.0,
    # Rows, summed (livesum): a gone window holds none.
    "steward_drift_window_rows": 0.0,
}
"""What a series that went reads under workers, by gauge."""


def active() -> bool:
    """Whether this process keeps its metric values in multiprocess files."""
    return values.ValueClass is not values.MutexValue


def remove_series(gauge: Gauge, *labels: str) -> None:
    """The series of ``gauge`` with ``labels`` goes: removed in one process (if it was there),
    set to its gone reading under workers."""
    if active():
        # Only a series this process published: another would appear, at its gone reading
        # (prometheus-client has no public "has this child"; ``remove`` reads the same dict).
        if tuple(labels) in gauge._metrics:
            (family,) = gauge.describe()
            gauge.labels(*labels).set(GONE_READINGS[family.name])
        return
    with contextlib.suppress(KeyError):  # never published
        gauge.remove(*labels)


def exposition(registry: CollectorRegistry) -> bytes:
    """``/metrics``: ``registry`` in one process; every worker's files under workers, read
    afresh at each scrape."""
    if not active():
        return generate_latest(registry)
    merged = CollectorRegistry()
    MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return generate_latest(merged)
