"""app/drift.py, the statistics: PSI against hand-computed values, the bin convention, the
profile of tied, missing and small columns, and the profile checks that keep a corrupt one out
(a version with one still loads, with no reference)."""

import math
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.stats import ks_2samp

from app.artifacts import FeatureProfile, ModelMetadata, read_metadata
from app.drift import (
    BINS,
    EPSILON,
    ROWS_PER_BIN,
    bin_shares,
    categorical_scores,
    numeric_scores,
    psi,
    reference_profile,
    usable_profile,
)
from app.features import FeatureSpec

NUMBER = FeatureSpec(name="x", dtype="float", min=0.0, max=1.0)
FLAG = FeatureSpec(name="flag", dtype="bool", min=0.0, max=1.0)
COLOUR = FeatureSpec(name="colour", dtype="category", categories=["blue", "red"])


def _column(values: list[Any]) -> np.ndarray:
    return np.array(values, dtype=object).reshape(-1, 1)


def test_psi_is_the_hand_computed_sum() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(
        0.25 * math.log(2) + 0.25 * math.log(1.5), rel=1e-12
    )
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_psi_counts_an_empty_bin_as_epsilon_so_it_stays_finite() -> None:
    expected = (0.5 - 1) * math.log(0.5 / 1) + (0.5 - EPSILON) * math.log(0.5 / EPSILON)
    assert psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(psi([1.0, 0.0], [0.0, 1.0]))


def test_a_value_on_an_edge_goes_to_the_upper_bin() -> None:
    values = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    # bins: below 1 | [1, 2) | 2 and above
    assert bin_shares(values, [1.0, 2.0]).tolist() == [1 / 6, 2 / 6, 3 / 6]
    assert bin_shares(np.array([]), [1.0]).tolist() == [0.0, 0.0]


def test_a_numeric_profile_has_deciles_of_its_training_values() -> None:
    values = np.arange(1000, dtype=np.float64)
    profile = reference_profile(_column(list(values)), [NUMBER])["x"]
    assert (profile.rows, profile.missing) == (1000, 0.0)
    deciles = np.quantile(values, np.arange(1, BINS) / BINS, method="inverted_cdf")
    assert profile.edges == deciles.tolist() == [99.0 + 100 * k for k in range(9)]  # values
    assert profile.shares == pytest.approx([0.099] + [0.1] * 8 + [0.101])
    sample = profile.sample or []
    assert (len(sample), sample[0], sample[-1]) == (200, 0.0, 999.0)
    assert sample == sorted(sample)


@pytest.mark.parametrize(
    ("rows", "bins"), [(20, 2), (39, 2), (60, 3), (112, 5), (199, 9), (200, 10), (5000, 10)]
)
def test_a_small_training_set_has_fewer_bins(rows: int, bins: int) -> None:
    """rows // ROWS_PER_BIN bins, at least 2, at most BINS: distinct values, so no bin merges."""
    profile = reference_profile(_column([float(v) for v in range(rows)]), [NUMBER])["x"]
    assert bins == min(BINS, max(2, rows // ROWS_PER_BIN))
    assert (len(profile.shares or []), len(profile.edges or [])) == (bins, bins - 1)
    assert sum(profile.shares or []) == pytest.approx(1.0)


def test_missing_values_are_a_share_and_take_no_part_in_the_bins() -> None:
    values = [float(v) for v in range(80)] + [None] * 20
    profile = reference_profile(_column(values), [NUMBER])["x"]
    assert profile.rows == 80
    assert profile.missing == pytest.approx(0.2)
    assert sum(profile.shares or []) == pytest.approx(1.0)
    assert max(profile.sample or []) == 79.0
    categories = reference_profile(_column(["red", None, "blue", "red"]), [COLOUR])["colour"]
    assert (categories.rows, categories.missing) == (3, 0.25)
    assert categories.frequencies == pytest.approx({"blue": 1 / 3, "red": 2 / 3})


def test_an_all_missing_column_has_an_empty_profile_and_is_never_scored() -> None:
    profile = reference_profile(_column([None] * 30), [NUMBER])["x"]
    assert (profile.rows, profile.missing, profile.edges, profile.shares) == (0, 1.0, [], [1.0])
    scores = numeric_scores(np.array([1.0] * 50), profile, 5)
    assert (scores.values, scores.psi, scores.ks) == (50, None, None)


def test_a_constant_feature_has_a_bin_of_its_own_and_drifts_either_way() -> None:
    profile = reference_profile(_column([5.0] * 40), [NUMBER])["x"]
    assert (profile.edges, profile.shares) == ([5.0, np.nextafter(5.0, 6.0)], [0.0, 1.0, 0.0])
    assert set(profile.sample or []) == {5.0}
    same = numeric_scores(np.full(30, 5.0), profile, 5)
    assert (same.psi, same.ks) == (0.0, 0.0)
    for moved in (4.0, 6.0):
        scores = numeric_scores(np.full(30, moved), profile, 5)
        assert scores.psi == pytest.approx(psi([0.0, 1.0], [1.0, 0.0]))


def test_a_boolean_feature_is_binned_as_0_and_1() -> None:
    profile = reference_profile(_column([True] * 30 + [False] * 70), [FLAG])["flag"]
    assert profile.edges == [0.0, 1.0, np.nextafter(1.0, 2.0)]
    assert profile.shares == pytest.approx([0.0, 0.7, 0.3, 0.0])
    as_trained = numeric_scores(np.array([1.0] * 3 + [0.0] * 7), profile, 5)
    assert as_trained.psi == pytest.approx(0.0, abs=1e-12)


def test_a_rare_boolean_turned_common_is_seen_by_the_psi() -> None:
    """5 % True in training, all True served: a shift the PSI must see (the KS does), although
    every training decile is 0 (the minimum)."""
    profile = reference_profile(_column([True] * 5 + [False] * 95), [FLAG])["flag"]
    served = np.ones(100)
    scores = numeric_scores(served, profile, 5)
    expected = psi([0.95, 0.05], [0.0, 1.0])  # the two values' shares, trained vs served
    assert scores.psi == pytest.approx(expected, rel=1e-9)
    assert scores.ks == pytest.approx(ks_2samp(served, [1.0] * 5 + [0.0] * 95).statistic)


def test_numeric_scores_match_an_independent_computation() -> None:
    rng = np.random.default_rng(7)
    training = rng.normal(size=1000)
    profile = reference_profile(_column(list(training)), [NUMBER])["x"]
    served = rng.normal(0.5, 1, size=300)
    edges = np.quantile(np.sort(training), np.arange(1, 10) / 10, method="inverted_cdf")
    trained = [np.mean((training >= lo) & (training < hi)) for lo, hi in _bins(edges)]
    now = [np.mean((served >= lo) & (served < hi)) for lo, hi in _bins(edges)]
    expected = sum((a - e) * math.log(a / e) for e, a in zip(trained, now, strict=True))
    scores = numeric_scores(np.append(served, [np.nan] * 7), profile, 200)
    assert scores.values == 300
    assert scores.psi == pytest.approx(expected, rel=1e-9)
    sample = np.sort(training)[np.linspace(0, 999, 200).round().astype(int)]
    assert scores.ks == pytest.approx(ks_2samp(served, sample).statistic)
    assert numeric_scores(served[:199], profile, 200).psi is None  # too few to judge


def _bins(edges: np.ndarray) -> list[tuple[float, float]]:
    bounds = [-math.inf, *edges, math.inf]
    return list(pairwise(bounds))


def test_categorical_scores_have_one_bin_for_every_unseen_category() -> None:
    profile = reference_profile(_column(["red"] * 6 + ["blue"] * 4), [COLOUR])["colour"]
    window = ["red", "red", "blue", "green", "pink", None]  # 5 present
    scores = categorical_scores(window, profile, 5)
    assert scores.values == 5
    assert scores.psi == pytest.approx(psi([0.4, 0.6, 0.0], [0.2, 0.4, 0.4]), rel=1e-12)
    assert categorical_scores(window, profile, 6).psi is None


def _numeric(**fields: Any) -> dict[str, Any]:
    good = {"rows": 10, "missing": 0.0, "edges": [1.0, 2.0], "shares": [0.2, 0.5, 0.3]}
    return {**good, "sample": [0.5, 1.5, 2.5], **fields}


def test_a_sound_profile_validates() -> None:
    FeatureProfile(**_numeric())
    FeatureProfile(frequencies={"a": 0.25, "b": 0.75}, rows=4, missing=0.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"edges": [1.0, math.inf], "shares": [0.2, 0.5, 0.3]},
        {"sample": [0.5, math.nan]},
        {"quantiles": [0.0, -math.inf]},
        {"edges": [2.0, 1.0]},
        {"edges": [1.0, 1.0]},
        {"shares": [0.2, 0.5, 0.2]},
        {"shares": [-0.2, 0.9, 0.3]},
        {"shares": [0.5, 0.5]},
        {"shares": None},
        {"edges": None},
        {"rows": -1},
        {"missing": 1.5},
    ],
)
def test_a_corrupt_numeric_profile_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FeatureProfile(**_numeric(**fields))


@pytest.mark.parametrize(
    "frequencies", [{"a": 0.5, "b": 0.6}, {"a": math.nan, "b": 1.0}, {"a": -0.5, "b": 1.5}]
)
def test_corrupt_category_shares_are_refused(frequencies: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        FeatureProfile(frequencies=frequencies, rows=3, missing=0.0)


def test_a_version_with_a_corrupt_profile_still_validates_with_no_reference(
    demo_models: Path,
) -> None:
    data = read_metadata(demo_models, "iris", 1).model_dump(mode="json")
    assert usable_profile(ModelMetadata.model_validate(data)) is not None
    first = next(iter(data["reference_profile"]))
    data["reference_profile"][first]["edges"].reverse()
    metadata = ModelMetadata.model_validate(data)
    assert metadata.reference_profile == {}
    assert usable_profile(metadata) is None
    data["reference_profile"] = {first: {"shares": [0.5, 0.5], "edges": [1.0], "sample": "x"}}
    assert ModelMetadata.model_validate(data).reference_profile == {}


def test_a_profile_from_before_drift_scores_is_not_usable(demo_models: Path) -> None:
    metadata = read_metadata(demo_models, "iris", 1)
    legacy = {
        name: FeatureProfile(probabilities=one.probabilities, quantiles=one.quantiles)
        for name, one in metadata.reference_profile.items()
    }
    assert usable_profile(metadata.model_copy(update={"reference_profile": legacy})) is None
    first = metadata.features[0].name
    partial = {**metadata.reference_profile, first: legacy[first]}
    assert usable_profile(metadata.model_copy(update={"reference_profile": partial})) is None
    one_missing = {k: v for k, v in metadata.reference_profile.items() if k != first}
    assert usable_profile(metadata.model_copy(update={"reference_profile": one_missing})) is None
