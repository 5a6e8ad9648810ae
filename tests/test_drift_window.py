"""The drift window and its metrics through the real app, under scripted sequences of rows:
exact data-quality counts (metrics and report), window size, eviction and time span, status
gauges against the PSI thresholds, the feature-label cap, and no NaN/Inf whatever is served.

Models are trained from CSV files through app/training.py. A numeric column with empty cells and
a text column make a nullable number and an open category (the fitted pipeline imputes and
ignores unknown categories: app/feature_survey.py probes both)."""

import math
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import metric, wait_until
from prometheus_client.parser import text_string_to_metric_families

from app.artifacts import ModelMetadata, read_metadata
from app.drift import EPSILON
from app.main import create_app
from app.settings import Settings
from app.training import train_csv

COLOURS = ("blue", "green", "red")
WIDE = ("f1", "f2", "f3", "f4", "f5", "f6")
QUALITY = ("missing", "out_of_range", "unseen_category")


@pytest.fixture(scope="module")
def drift_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mixed``: x (a number, 10 % empty cells) and colour (a category); ``wide``: six
    numbers. 400 rows each: 300 training rows, 10 bins per numeric feature."""
    root = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(12)
    x = rng.uniform(0, 10, size=400)
    y = (x > 5) ^ (rng.random(400) < 0.1)
    x[rng.choice(400, size=40, replace=False)] = np.nan
    mixed = pd.DataFrame({"x": x, "colour": rng.choice(COLOURS, size=400), "y": y.astype(int)})
    mixed.to_csv(root / "mixed.csv", index=False)
    train_csv(root / "models", root / "mixed.csv", "y", "mixed", promote=True)
    columns = rng.normal(size=(400, len(WIDE)))
    wide = pd.DataFrame(columns, columns=list(WIDE))
    wide["y"] = (columns[:, 0] + columns[:, 1] > 0).astype(int)
    wide.to_csv(root / "wide.csv", index=False)
    train_csv(root / "models", root / "wide.csv", "y", "wide", promote=True)
    return root / "models"


def _serve(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture
def small_window(tmp_path: Path, drift_models: Path) -> Iterator[TestClient]:
    settings = Settings(
        models_dir=drift_models,
        data_dir=tmp_path / "data",
        drift_min_rows=5,
        drift_window_rows=10,
        drift_interval_seconds=3600,  # scored when the test says (_refresh)
        input_range_multiple=1,  # x trained on [0, 10] accepts [-10, 20]
    )
    with _serve(settings) as client:
        yield client


def _refresh(client: TestClient) -> None:
    """Score every window now, as the background task does every interval."""
    assert client.portal is not None
    client.portal.call(client.app_state["services"].drift.refresh)


def _report(client: TestClient, model: str) -> dict[str, Any]:
    response = client.get(f"/models/{model}/drift")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def _predict(client: TestClient, model: str, rows: Sequence[dict[str, Any]]) -> None:
    response = client.post(f"/predict/{model}", json={"instances": list(rows)})
    assert response.status_code == 200, response.text


def _mixed(*rows: tuple[float | None, str | None]) -> list[dict[str, Any]]:
    return [{"x": x, "colour": colour} for x, colour in rows]


def _representatives(metadata: ModelMetadata, feature: str) -> list[float]:
    """One value inside each of the feature's training bins, lowest bin first."""
    spec = next(f for f in metadata.features if f.name == feature)
    edges = metadata.reference_profile[feature].edges or []
    assert spec.min is not None
    assert spec.max is not None
    bounds = [spec.min, *edges, spec.max]
    return [(low + high) / 2 for low, high in pairwise(bounds)]


def _psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Independently: sum((a - e) ln(a / e)), an empty share counting as EPSILON."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, EPSILON), max(a, EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def _numeric_psi(metadata: ModelMetadata, feature: str, values: Sequence[float | None]) -> float:
    profile = metadata.reference_profile[feature]
    bounds = [-math.inf, *(profile.edges or []), math.inf]
    present = [v for v in values if v is not None]
    shares = [sum(lo <= v < hi for v in present) / len(present) for lo, hi in pairwise(bounds)]
    return _psi(profile.shares or [], shares)


def _categorical_psi(metadata: ModelMetadata, feature: str, values: Sequence[str | None]) -> float:
    reference = metadata.reference_profile[feature].frequencies or {}
    present = [v for v in values if v is not None]
    shares = [present.count(c) / len(present) for c in reference]
    unseen = sum(v not in reference for v in present) / len(present)
    return _psi([*reference.values(), 0.0], [*shares, unseen])


def _level(psi: float) -> int:
    return 2 if psi >= 0.25 else 1 if psi >= 0.1 else 0


def _series(client: TestClient, name: str, **labels: str) -> dict[str, float]:
    """Every sample of ``name`` with these labels, by its feature label."""
    found = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found[sample.labels.get("feature", "")] = float(sample.value)
    return found


def _quality(client: TestClient, model: str, feature: str) -> dict[str, float]:
    labels = {"model": model, "version": "1", "feature": feature}
    return {i: metric(client, "steward_data_quality_total", **labels, issue=i) for i in QUALITY}


def _gauges(client: TestClient, model: str) -> tuple[float, float]:
    """steward_model_drift_status and steward_drift_window_rows of the model's v1."""
    return (
        metric(client, "steward_model_drift_status", model=model, version="1"),
        metric(client, "steward_drift_window_rows", model=model, version="1"),
    )


def test_a_scripted_sequence_has_exact_counts_statuses_and_eviction(
    small_window: TestClient, drift_models: Path
) -> None:
    client, metadata = small_window, read_metadata(drift_models, "mixed", 1)
    x = next(f for f in metadata.features if f.name == "x")
    colour = next(f for f in metadata.features if f.name == "colour")
    assert (x.nullable, colour.nullable, colour.open_categories) == (True, True, True)
    assert (x.min or 0) > -5  # both served below out of range
    assert (x.max or 0) < 15
    bins = _representatives(metadata, "x")
    assert len(bins) == 10

    sent = _mixed(
        (None, "red"),  # x missing
        (15.0, "green"),  # x out of range
        (bins[1], "purple"),  # colour unseen
        (None, None),  # both missing
    )
    _predict(client, "mixed", sent)
    _refresh(client)
    report = _report(client, "mixed")
    assert (report["status"], report["window_rows"], report["window_max_rows"]) == (
        "collecting",
        4,
        10,
    )
    assert _gauges(client, "mixed") == (-1, 4)
    expected_x = {"missing": 2, "out_of_range": 1, "unseen_category": 0}
    expected_colour = {"missing": 1, "out_of_range": 0, "unseen_category": 1}
    assert _quality(client, "mixed", "x") == expected_x
    assert _quality(client, "mixed", "colour") == expected_colour

    sent += _mixed((-5.0, "orange"))  # x out of range, colour unseen
    _predict(client, "mixed", sent[-1:])
    _refresh(client)
    report = _report(client, "mixed")
    # 5 rows, but x has 3 values present and colour 4: no feature can be judged yet
    assert (report["status"], report["window_rows"]) == ("collecting", 5)
    assert [(f["window_values"], f["psi"], f["status"]) for f in report["features"]] == [
        (3, None, "collecting"),
        (4, None, "collecting"),
    ]
    assert _gauges(client, "mixed") == (-1, 5)
    assert _series(client, "steward_feature_drift_psi", model="mixed") == {}

    expected_x = {"missing": 2, "out_of_range": 2, "unseen_category": 0}
    expected_colour = {"missing": 1, "out_of_range": 0, "unseen_category": 2}
    typical = _mixed(
        (bins[0], "red"), (bins[2], "green"), (bins[3], "blue"), (bins[4], "red"), (bins[5], "blue")
    )
    for rows, held in ((typical, sent + typical), (_mixed((bins[6], "blue")), None)):
        _predict(client, "mixed", rows)
        sent += rows
        window = held or sent[-10:]  # the 11th row pushed the first out
        _refresh(client)
        report = _report(client, "mixed")
        features = {f["name"]: f for f in report["features"]}
        assert report["window_rows"] == 10
        assert features["x"]["window_values"] == sum(r["x"] is not None for r in window)
        assert features["colour"]["window_values"] == sum(r["colour"] is not None for r in window)
        psi_x = _numeric_psi(metadata, "x", [r["x"] for r in window])
        psi_colour = _categorical_psi(metadata, "colour", [r["colour"] for r in window])
        assert features["x"]["psi"] == pytest.approx(psi_x, rel=1e-9)
        assert features["colour"]["psi"] == pytest.approx(psi_colour, rel=1e-9)
        level = max(_level(psi_x), _level(psi_colour))
        assert report["status"] == ("ok", "warn", "drift")[level]
        assert _gauges(client, "mixed") == (level, 10)
        assert features["x"]["quality"] == expected_x
        assert features["colour"]["quality"] == expected_colour
        assert _series(client, "steward_feature_drift_psi", model="mixed") == pytest.approx(
            {"x": psi_x, "colour": psi_colour}, rel=1e-12
        )
        assert set(_series(client, "steward_feature_drift_ks", model="mixed")) == {"x"}
    assert [f["window_values"] for f in report["features"]] == [9, 9]  # row 1 had no x

    # every row in the top bin, one colour: both drift
    _predict(client, "mixed", _mixed(*[(bins[-1], "red")] * 10))
    _refresh(client)
    report = _report(client, "mixed")
    assert [f["status"] for f in report["features"]] == ["drift", "drift"]
    assert (report["status"], _gauges(client, "mixed")) == ("drift", (2, 10))

    # one row per training decile, the colours 2 / 3 / 5 where training had about a third each
    skewed = ["blue"] * 2 + ["green"] * 3 + ["red"] * 5
    _predict(client, "mixed", _mixed(*zip(bins, skewed, strict=True)))
    _refresh(client)
    report = _report(client, "mixed")
    features = {f["name"]: f for f in report["features"]}
    psi_colour = _categorical_psi(metadata, "colour", skewed)
    assert 0.1 <= psi_colour < 0.25
    assert features["colour"]["psi"] == pytest.approx(psi_colour, rel=1e-9)
    assert [f["status"] for f in report["features"]] == ["ok", "warn"]
    assert (report["status"], _gauges(client, "mixed")) == ("warn", (1, 10))

    # one row per training decile, the colours about as trained: ok again
    as_trained = _mixed(*zip(bins, ["blue", "green", "red"] * 3 + ["red"], strict=True))
    _predict(client, "mixed", as_trained)
    _refresh(client)
    report = _report(client, "mixed")
    features = {f["name"]: f for f in report["features"]}
    assert features["x"]["psi"] == pytest.approx(_numeric_psi(metadata, "x", bins), rel=1e-9)
    assert features["x"]["psi"] < 0.1
    assert features["colour"]["psi"] < 0.1
    assert (report["status"], _gauges(client, "mixed")) == ("ok", (0, 10))

    # rows with no issue left every count where it was, in the metrics and the report alike
    assert _quality(client, "mixed", "x") == expected_x == features["x"]["quality"]
    assert _quality(client, "mixed", "colour") == expected_colour == features["colour"]["quality"]


def test_rows_older_than_the_time_span_leave_the_window(tmp_path: Path, drift_models: Path) -> None:
    settings = Settings(
        models_dir=drift_models,
        data_dir=tmp_path / "data",
        drift_min_rows=5,
        drift_window_rows=10,
        drift_window_seconds=5.0,  # long enough to see the rows in it under load
        drift_interval_seconds=3600,
    )
    metadata = read_metadata(drift_models, "mixed", 1)
    bins = _representatives(metadata, "x")
    with _serve(settings) as client:
        _predict(client, "mixed", _mixed(*[(bins[-1], "red")] * 5, (None, "red")))
        _refresh(client)
        report = _report(client, "mixed")
        assert (report["status"], report["window_rows"]) == ("drift", 6)
        assert _gauges(client, "mixed") == (2, 6)
        assert _series(client, "steward_estimated_accuracy", model="mixed") == {
            "": pytest.approx(report["estimated_accuracy"], rel=1e-12)
        }

        def emptied() -> bool:
            _refresh(client)
            return bool(_report(client, "mixed")["window_rows"] == 0)

        assert wait_until(emptied, seconds=20, interval=0.2)
        report = _report(client, "mixed")
        assert report["status"] == "collecting"
        assert [(f["psi"], f["window_values"]) for f in report["features"]] == [(None, 0)] * 2
        assert _gauges(client, "mixed") == (-1, 0)
        assert _series(client, "steward_feature_drift_psi", model="mixed") == {}
        assert _series(client, "steward_feature_drift_ks", model="mixed") == {}
        assert report["estimated_accuracy"] is None
        assert _series(client, "steward_estimated_accuracy", model="mixed") == {}
        # the counts are of everything served, not of the window
        assert report["features"][0]["quality"]["missing"] == 1
        assert _quality(client, "mixed", "x")["missing"] == 1


def test_above_the_feature_cap_only_the_top_features_are_exported(
    tmp_path: Path, drift_models: Path
) -> None:
    settings = Settings(
        models_dir=drift_models,
        data_dir=tmp_path / "data",
        drift_min_rows=5,
        drift_window_rows=10,
        drift_interval_seconds=3600,
        drift_feature_labels=3,
        drift_top_features=2,
    )
    metadata = read_metadata(drift_models, "wide", 1)
    bins = {f: _representatives(metadata, f) for f in WIDE}
    assert {len(b) for b in bins.values()} == {10}
    top = {f.name: f.max for f in metadata.features}

    def rows(shifted: set[str]) -> list[dict[str, Any]]:
        """One row per training decile of every feature, ``shifted`` ones at their maximum."""
        return [{f: top[f] if f in shifted else bins[f][k] for f in WIDE} for k in range(10)]

    with _serve(settings) as client:
        span = (top["f4"] or 0) - next(f.min or 0 for f in metadata.features if f.name == "f4")
        issues = {**rows(set())[0], "f3": None, "f4": (top["f4"] or 0) + span}
        _predict(client, "wide", [issues])
        for shifted, gone in (({"f1", "f2"}, set()), ({"f5", "f6"}, {"f1", "f2"})):
            _predict(client, "wide", rows(shifted))
            _refresh(client)
            report = _report(client, "wide")
            scores = {f["name"]: f["psi"] for f in report["features"]}
            assert len(scores) == 6
            assert None not in scores.values()
            assert set(sorted(scores, key=lambda f: -scores[f])[:2]) == shifted
            psi = _series(client, "steward_feature_drift_psi", model="wide")
            assert psi == pytest.approx({f: scores[f] for f in shifted}, rel=1e-12)
            assert set(_series(client, "steward_feature_drift_ks", model="wide")) == shifted
            assert not gone & set(psi)
            assert report["status"] == "drift"
            quality = _series(client, "steward_data_quality_total", model="wide")
            assert set(quality) == {"_all"}
            assert _quality(client, "wide", "_all") == {
                "missing": 1,
                "out_of_range": 1,
                "unseen_category": 0,
            }
            by_feature = {f["name"]: f["quality"] for f in report["features"]}
            assert by_feature["f3"] == {"missing": 1, "out_of_range": 0, "unseen_category": 0}
            assert by_feature["f4"] == {"missing": 0, "out_of_range": 1, "unseen_category": 0}
        text = client.get("/metrics").text
        assert 'feature="f1"' not in text
        assert 'feature="f2"' not in text


def _assert_finite(value: Any) -> None:
    """Every number in a JSON document is finite."""
    if isinstance(value, dict):
        for one in value.values():
            _assert_finite(one)
    elif isinstance(value, list):
        for one in value:
            _assert_finite(one)
    elif isinstance(value, float):
        assert math.isfinite(value)


def _assert_metrics_finite(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            assert math.isfinite(sample.value), sample


def test_extreme_missing_and_constant_windows_give_finite_numbers(
    tmp_path: Path, drift_models: Path
) -> None:
    settings = Settings(
        models_dir=drift_models,
        data_dir=tmp_path / "data",
        drift_min_rows=5,
        drift_window_rows=10,
        drift_interval_seconds=3600,
        input_range_multiple=0,  # any finite number is accepted
    )
    with _serve(settings) as client:
        windows = {
            "extreme": _mixed(*[(1e308, "red"), (-1e308, "green")] * 5),
            "missing": _mixed(*[(None, None)] * 10),
            "constant": _mixed(*[(3.0, "red")] * 10),
            "mostly extreme": _mixed((1e308, "red"), *[(-1e308, None)] * 9),
        }
        for name, rows in windows.items():
            _predict(client, "mixed", rows)
            _refresh(client)
            report = _report(client, "mixed")
            _assert_finite(report)
            _assert_metrics_finite(client)
            psi = _series(client, "steward_feature_drift_psi", model="mixed")
            judged = {f["name"] for f in report["features"] if f["psi"] is not None}
            assert set(psi) == judged, name
            if name == "missing":
                assert judged == set()
                assert report["status"] == "collecting"
            else:
                assert "x" in judged, name
                x = report["features"][0]
                if name != "constant":  # all in the outer bins: drift
                    assert x["status"] == "drift", name
                assert 0 <= x["ks"] <= 1
            assert report["estimated_accuracy"] is not None
            assert 0.5 <= report["estimated_accuracy"] <= 1
        assert _quality(client, "mixed", "x") == {
            "missing": 10,
            "out_of_range": 20,  # every extreme value: 10 + 10
            "unseen_category": 0,
        }
        assert client.get("/readyz").status_code == 200


# scikit-learn's imputer warns at every fit and transform that it skips the empty column
@pytest.mark.filterwarnings("ignore:Skipping features without any observed values")
def test_a_version_trained_with_an_empty_column_serves_and_scores_the_others(
    tmp_path: Path,
) -> None:
    """A column with no value at all in training: training succeeds, the column has no
    reference (nothing to compare with), the other columns are judged."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=200)
    frame = pd.DataFrame({"x": x, "blank": [None] * 200, "y": (x > 0).astype(int)})
    frame.to_csv(tmp_path / "blank.csv", index=False)
    metadata = train_csv(tmp_path / "models", tmp_path / "blank.csv", "y", "blank", promote=True)
    assert metadata.reference_profile["blank"].rows == 0
    settings = Settings(
        models_dir=tmp_path / "models",
        data_dir=tmp_path / "data",
        drift_min_rows=5,
        drift_window_rows=10,
        drift_interval_seconds=3600,
    )
    with _serve(settings) as client:
        _predict(client, "blank", [{"x": float(v), "blank": None} for v in x[:10]])
        _refresh(client)
        report = _report(client, "blank")
        features = {f["name"]: f for f in report["features"]}
        assert report["reference_source"] == "metadata"
        assert (features["blank"]["status"], features["blank"]["psi"]) == ("no_reference", None)
        assert features["blank"]["quality"]["missing"] == 10
        assert features["x"]["psi"] is not None
        assert report["status"] in {"ok", "warn", "drift"}
