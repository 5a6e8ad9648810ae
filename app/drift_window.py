"""The request path's share of drift: each served version keeps its last rows in a ring of
fixed size, and counts the data-quality issues of every row as it passes.

Appending a row writes into slots allocated when the window was made: its values (into a
float array when every feature is a number or a flag, so the row's objects are freed with its
request; as the validated row otherwise), the probability of its predicted class and the time;
then one check per feature that can have an issue: O(features), no allocation beyond the
window. The scores are computed elsewhere
(app/drift_monitor.py) from a ``snapshot``. Appends and snapshots happen on the event loop, so
they never interleave.

Issues (``ISSUES``): ``missing`` (null or omitted, for a feature that accepts it),
``out_of_range`` (a number or date outside the training range, which the request model accepts
within STEWARD_INPUT_RANGE_MULTIPLE spans), ``unseen_category`` (a category training never
saw, for a feature whose model accepts them). Values the request model refuses never get here.
"""

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt

from app.artifacts import ModelMetadata
from app.features import FeatureSpec, Row, date_to_days

if TYPE_CHECKING:  # the metrics import this module's names, and the CLI stays light
    from app.loading import RowOutput

Issue = Literal["missing", "out_of_range", "unseen_category"]
ISSUES: tuple[Issue, ...] = get_args(Issue)
MAX_CELLS = 1_000_000
"""A window holds at most this many values (rows x (features + classes)): a model with many
features or classes keeps fewer rows, so a window's memory is bounded whatever the model."""


class Increment(Protocol):
    """What counts one issue: a Prometheus counter child (app/drift_metrics.py)."""

    def inc(self, amount: float = 1) -> None: ...


Column = Sequence[Any] | npt.NDArray[np.float64]
"""One feature's values in a window: floats, or the values as served."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The window's rows served since a time, oldest first: as floats (NaN: missing) when the
    window keeps numbers, as the validated rows otherwise; and per row the probability of its
    predicted class (NaN: the model gives none)."""

    numbers: npt.NDArray[np.float64] | None
    rows: list[Row]
    confidences: npt.NDArray[np.float64]

    @classmethod
    def empty(cls) -> "Snapshot":
        return cls(None, [], np.empty(0))

    def __len__(self) -> int:
        return len(self.confidences)

    def columns(self, width: int) -> list["Column"]:
        """Each feature's values, in feature order (blocking for validated rows: call it off
        the event loop)."""
        if self.numbers is not None:
            return [self.numbers[:, index] for index in range(width)]
        if not self.rows:
            return [() for _ in range(width)]
        return list(zip(*self.rows, strict=True))


def capacity(rows: int, metadata: ModelMetadata) -> int:
    """The window's size for ``rows`` wanted, for a version of this many features and classes
    (each row keeps its probabilities)."""
    width = len(metadata.features) + len(metadata.classes or ())
    return max(1, min(rows, MAX_CELLS // max(width, 1)))


class DriftWindow:
    """The last rows one version served, and the data-quality counts of all it served."""

    def __init__(
        self,
        features: Sequence[FeatureSpec],
        size: int,
        counters: Sequence[dict[Issue, Increment]],
    ) -> None:
        """``counters[j][issue]`` counts ``issue`` of feature ``j`` (several features may
        share one: app/drift_metrics.py caps the labels)."""
        self.features = tuple(features)
        self.size = size
        self.appended = 0
        self.counts = [dict.fromkeys(ISSUES, 0) for _ in self.features]
        """Issues per feature since the window was made: the report's totals."""
        numeric = all(f.dtype in ("float", "int", "bool") for f in self.features)
        # NumPy makes a number, a flag or None (NaN) a float as it writes the row.
        self._numbers = np.zeros((size, len(self.features))) if numeric else None
        self._rows: list[Row | None] = [] if numeric else [None] * size
        self._confidences = np.full(size, math.nan)
        self._times: list[float] = [0.0] * size
        self._next = 0
        # Numbers with a training range are checked inline (most features of most models);
        # the others through a function of their kind.
        self._ranges: list[tuple[int, float, float, dict[Issue, int], dict[Issue, Increment]]] = []
        self._checks: list[tuple[int, Check, dict[Issue, int], dict[Issue, Increment]]] = []
        for index, feature in enumerate(self.features):
            counts, counter = self.counts[index], counters[index]
            if (
                feature.dtype in ("float", "int")
                and feature.min is not None
                and feature.max is not None
            ):
                self._ranges.append((index, feature.min, feature.max, counts, counter))
            elif (check := _check(feature)) is not None:
                self._checks.append((index, check, counts, counter))

    def append(self, rows: Sequence[Row], outputs: Sequence["RowOutput"], now: float) -> None:
        """Rows a client was answered for (on the event loop), at time ``now``."""
        size, numbers, ring, times = self.size, self._numbers, self._rows, self._times
        confidences, nan = self._confidences, math.nan
        ranges, checks = self._ranges, self._checks
        slot = self._next
        for row, (_, proba) in zip(rows, outputs, strict=True):
            if numbers is not None:
                numbers[slot] = row
            else:
                ring[slot] = row
            confidences[slot] = max(proba.values()) if proba else nan
            times[slot] = now
            slot = slot + 1 if slot + 1 < size else 0
            for index, low, high, counts, counter in ranges:
                value = row[index]
                if value is None:
                    counts["missing"] += 1
                    counter["missing"].inc()
                elif not low <= value <= high:
                    counts["out_of_range"] += 1
                    counter["out_of_range"].inc()
            for index, check, counts, counter in checks:
                issue = check(row[index])
                if issue is not None:
                    counts[issue] += 1
                    counter[issue].inc()
        self._next = slot
        self.appended += len(rows)

    def snapshot(self, since: float) -> Snapshot:
        """The rows appended at ``since`` or later, oldest first (on the event loop: copies of
        the ring's slices, and a binary search, since times only grow along the ring)."""
        held, slot = min(self.appended, self.size), self._next
        start = slot - held  # negative: the oldest rows are at the ring's end
        order = np.r_[start:0, 0:slot] if start < 0 else np.arange(start, slot)
        times = [self._times[i] for i in order.tolist()]
        kept = order[bisect.bisect_left(times, since) :]
        numbers = None if self._numbers is None else self._numbers[kept]
        rows = [self._rows[i] for i in kept.tolist()] if self._numbers is None else []
        return Snapshot(numbers, rows, self._confidences[kept])


Check = Callable[[Any], Issue | None]


def _check(feature: FeatureSpec) -> Check | None:
    """The issue one value of ``feature`` has, if any; None: this feature can have none."""
    nullable = feature.nullable
    if feature.dtype == "category":
        known = frozenset(feature.categories or ())
        if not feature.open_categories or not known:
            return (lambda v: "missing" if v is None else None) if nullable else None

        def category(value: Any) -> Issue | None:
            if value is None:
                return "missing"
            return None if value in known else "unseen_category"

        return category
    low, high = feature.min, feature.max
    if feature.dtype == "bool" or low is None or high is None:
        return (lambda v: "missing" if v is None else None) if nullable else None
    to_number = date_to_days if feature.dtype == "date" else None

    def number(value: Any) -> Issue | None:
        if value is None:
            return "missing"
        if to_number is not None:
            value = to_number(value)
        return None if low <= value <= high else "out_of_range"

    return number
