"""Input drift, the statistics: the reference profile of a version's training inputs (saved in
its metadata), and the scores of a window of served values against it.

Numeric features (floats, integers, booleans as 0/1, dates as days) are cut at the training
part's deciles (fewer bins for a small training set): the profile keeps the inner bin edges,
the training share of each bin and an evenly spaced sample of the training values, sorted.
A feature with no more distinct training values than bins (a flag, a count, a rating) has a
bin per value. Values below the smallest training value, and above the largest, fall in bins
training left empty, so a feature that was constant in training (a flag always false) drifts
when it moves.
Categorical features keep each category's share. Served values are scored against that with:

- the Population Stability Index, ``sum((served - training) * ln(served / training))`` over
  the bins (numeric) or the categories plus one bin for categories training never saw; a share
  of 0 on either side counts as ``EPSILON``, so one empty bin gives a large, finite score;
- for numeric features, the two-sample Kolmogorov-Smirnov statistic (SciPy's ``ks_2samp``)
  of the served values against the training sample.

Missing values take no part in either score: they are counted as data quality
(app/drift_window.py). Everything here is pure and blocking: app/drift_monitor.py runs it in a
worker thread, off the request path.
"""

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import ks_2samp

from app.artifacts import FeatureProfile, ModelMetadata
from app.features import FeatureSpec

QUANTILE_PROBABILITIES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
BINS = 10
"""Numeric features are cut into this many training quantiles: fewer where values tie, and
fewer for a small training set, so that each bin holds ``ROWS_PER_BIN`` training values."""
ROWS_PER_BIN = 20
"""A PSI has a floor of noise of about ``(bins - 1) * (1 / window + 1 / training)`` between two
samples of one distribution: fewer bins keep it under the warn threshold for a small training
set (iris: 112 training rows, 5 bins)."""
SAMPLE_SIZE = 200
"""Training values kept per numeric feature for the KS test: enough for a statistic to 0.005."""
EPSILON = 1e-4
"""The share an empty bin counts as in the PSI (either side), so the score stays finite."""

FloatArray = npt.NDArray[np.float64]


def reference_profile(
    matrix: npt.NDArray[np.generic], features: Sequence[FeatureSpec]
) -> dict[str, FeatureProfile]:
    """Profile each column of ``matrix`` (rows x features, in ``features`` order)."""
    return {
        feature.name: _numeric_profile(matrix[:, index])
        if feature.numeric
        else _categorical_profile(matrix[:, index])
        for index, feature in enumerate(features)
    }


def _numeric_profile(column: npt.NDArray[np.generic]) -> FeatureProfile:
    values = column.astype(np.float64)
    present = np.sort(values[np.isfinite(values)])
    rows, missing = int(present.size), _share(values.size - present.size, values.size)
    if not rows:  # nothing to compare with: this feature is not judged (app/drift_report.py)
        return FeatureProfile(rows=0, missing=missing, edges=[], shares=[1.0], sample=[])
    bins = min(BINS, max(2, rows // ROWS_PER_BIN))
    distinct = np.unique(present)
    if distinct.size <= bins:
        # Few values (a flag, a count, a rating): each its own bin, so a rare one turned
        # common moves the PSI, not only the KS.
        edges = distinct
    else:
        # Edges are training values (every bin holds one).
        edges = np.unique(np.quantile(present, np.arange(1, bins) / bins, method="inverted_cdf"))
        if edges[0] == present[0]:
            # Ties at the smallest value fill the lowest deciles: the next training value is
            # an edge too, so they keep a bin of their own.
            edges = np.unique(np.append(edges, distinct[1]))
    if edges[-1] == present[-1]:
        # The largest value ends a bin of its own: above it, where training never went, is a
        # bin of share 0, like below the smallest.
        edges = np.append(edges, np.nextafter(present[-1], np.inf))
    positions = np.linspace(0, rows - 1, min(rows, SAMPLE_SIZE)).round().astype(np.intp)
    return FeatureProfile(
        probabilities=list(QUANTILE_PROBABILITIES),
        quantiles=np.quantile(present, QUANTILE_PROBABILITIES).tolist(),
        rows=rows,
        missing=missing,
        edges=edges.tolist(),
        shares=bin_shares(present, edges).tolist(),
        sample=present[positions].tolist(),
    )


def _categorical_profile(column: npt.NDArray[np.generic]) -> FeatureProfile:
    present = [str(v) for v in column if v is not None and v == v]  # v == v drops NaN
    counts = Counter(present)
    total = max(len(present), 1)
    return FeatureProfile(
        frequencies={k: c / total for k, c in sorted(counts.items())},
        rows=len(present),
        missing=_share(len(column) - len(present), len(column)),
    )


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def usable_profile(metadata: ModelMetadata) -> dict[str, FeatureProfile] | None:
    """The metadata's profile if it covers every feature with what drift needs (profiles
    written before drift scores have quantiles only); None otherwise."""
    profile = metadata.reference_profile
    for feature in metadata.features:
        one = profile.get(feature.name)
        if one is None or one.rows is None:
            return None
        if feature.numeric and (one.edges is None or one.shares is None or one.sample is None):
            return None
        if not feature.numeric and one.frequencies is None:
            return None
    return profile


def bin_shares(values: FloatArray, edges: Sequence[float] | FloatArray) -> FloatArray:
    """The share of ``values`` in each bin that ``edges`` (ascending) cut: bin ``i`` holds the
    values with exactly ``i`` edges at or below them."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(values.size, 1)


def psi(expected: Iterable[float], actual: Iterable[float]) -> float:
    """The Population Stability Index of ``actual`` shares against ``expected`` (same bins)."""
    e = np.maximum(np.fromiter(expected, np.float64), EPSILON)
    a = np.maximum(np.fromiter(actual, np.float64), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True, slots=True)
class Scores:
    """One feature's window against its reference: None where not computed."""

    values: int
    """Present (not missing) values in the window."""
    psi: float | None = None
    ks: float | None = None
    ks_pvalue: float | None = None


def numeric_scores(values: FloatArray, profile: FeatureProfile, min_rows: int) -> Scores:
    """PSI and KS of a numeric window (NaN: missing) once it has ``min_rows`` values."""
    present = values[np.isfinite(values)]
    if present.size < max(min_rows, 1) or not profile.sample:
        return Scores(int(present.size))
    shares = bin_shares(present, profile.edges or [])
    result = ks_2samp(present, np.asarray(profile.sample, dtype=np.float64))
    return Scores(
        int(present.size),
        psi(profile.shares or [], shares),
        _finite(result.statistic),
        _finite(result.pvalue),
    )


def categorical_scores(
    values: Sequence[str | None], profile: FeatureProfile, min_rows: int
) -> Scores:
    """PSI of a categorical window (None: missing) over the training categories plus one bin
    for every category training never saw."""
    counts = Counter(v for v in values if v is not None)
    present = sum(counts.values())
    if present < max(min_rows, 1):
        return Scores(present)
    reference = profile.frequencies or {}
    seen = [counts.pop(category, 0) / present for category in reference]
    unseen = sum(counts.values()) / present
    return Scores(present, psi([*reference.values(), 0.0], [*seen, unseen]))


def _finite(value: object) -> float | None:
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None
