"""Input drift end to end: a real `steward serve` scoring what it served against the training
profile of a CSV model, checked against an independent computation written here.

The CSV has three numeric features and one categorical one (`steward train`'s recipe one-hot
encodes it with handle_unknown="ignore", so the model takes unseen categories). One model is
sent rows from the training distribution, another the same with one numeric feature shifted
and a categorical feature given unseen values; a third takes a long stream, once through the
server and once in process, where what it leaves on the heap can be traced exactly.
"""

import gc
import json
import math
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import ks_2samp
from server import STEWARD, Server, free_port, serving
from sklearn.model_selection import train_test_split

from app.main import create_app
from app.settings import Settings
from app.training import train_csv

NUMERIC = ("pressure", "width", "temperature")
CATEGORICAL = "colour"
FEATURES = (*NUMERIC, CATEGORICAL)
COLOURS = ("red", "green", "blue")
UNSEEN = ("purple", "orange")
SHIFT = 1.5  # pressure's shift: 1.5 training standard deviations
EPSILON = 1e-4  # an empty share, either side
WINDOW = 1000
MIN_ROWS = 200
BATCH = 250

Row = dict[str, Any]


def sensor_rows(rows: int, seed: int) -> list[Row]:
    """Rows of the training distribution: the same generator for training and serving."""
    rng = np.random.default_rng(seed)
    pressure = rng.normal(0.0, 1.0, rows)
    width = rng.uniform(0.0, 10.0, rows)
    temperature = rng.normal(50.0, 10.0, rows)
    colour = rng.choice(COLOURS, size=rows, p=[0.5, 0.3, 0.2])
    return [
        {"pressure": float(p), "width": float(w), "temperature": float(t), "colour": str(c)}
        for p, w, t, c in zip(pressure, width, temperature, colour, strict=True)
    ]


def shifted(rows: Sequence[Row], seed: int) -> list[Row]:
    """The same rows with pressure moved up by SHIFT and 40% of the colours unseen."""
    rng = np.random.default_rng(seed)
    unseen = rng.random(len(rows)) < 0.4
    picks = rng.choice(UNSEEN, size=len(rows))
    return [
        row | {"pressure": row["pressure"] + SHIFT} | ({"colour": str(pick)} if new else {})
        for row, new, pick in zip(rows, unseen, picks, strict=True)
    ]


def training_csv(path: Path) -> Path:
    """4000 labelled rows: 3000 train the model (and its profile), 1000 are held out."""
    frame = pd.DataFrame(sensor_rows(4000, seed=1))
    logit = (
        1.2 * frame["pressure"]
        - 0.2 * (frame["width"] - 5)
        + np.where(frame["colour"] == "red", 0.8, -0.4)
    )
    draw = np.random.default_rng(99).random(len(frame))
    frame["label"] = np.where(draw < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame.to_csv(path, index=False)
    return path


@dataclass(frozen=True)
class Trained:
    csv: Path
    models: Path

    def metadata(self, model: str, version: int = 1) -> dict[str, Any]:
        """The version's metadata.json as written (read here, not through app/artifacts)."""
        data: dict[str, Any] = json.loads(
            (self.models / model / str(version) / "metadata.json").read_text()
        )
        return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    work = tmp_path_factory.mktemp("drift-e2e")
    csv = training_csv(work / "sensors.csv")
    models = work / "models"
    for name in ("steady", "moved", "stream"):
        train_csv(models, csv, "label", name)
    return Trained(csv, models)


@contextmanager
def drift_server(trained: Trained, work: Path, window: int) -> Iterator[Server]:
    """`steward serve` on the trained models, scoring every 0.2 s."""
    work.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(trained.models),
        "STEWARD_DATA_DIR": str(work / "data"),
        "STEWARD_DRIFT_WINDOW_ROWS": str(window),
        "STEWARD_DRIFT_MIN_ROWS": str(MIN_ROWS),
        "STEWARD_DRIFT_INTERVAL_SECONDS": "0.2",
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=work / "steward.log", ready="/readyz") as server:
        yield server
    log = (work / "steward.log").read_text()
    assert "Traceback" not in log, log


def send(http: httpx2.Client, model: str, rows: Sequence[Row], batch: int = BATCH) -> None:
    for start in range(0, len(rows), batch):
        response = http.post(f"/predict/{model}", json={"instances": rows[start : start + batch]})
        assert response.status_code == 200, response.text


def drift_report(http: httpx2.Client, model: str) -> dict[str, Any]:
    response = http.get(f"/models/{model}/drift")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def settled_report(http: httpx2.Client, model: str) -> dict[str, Any]:
    """The report of a scoring round whose snapshot was taken after every row sent so far was
    answered. Rounds run one after another: the first round to finish after now may have
    copied the window before now, the round after it copied it after now."""
    first = _round_after(http, model, datetime.now(UTC))
    return _round_after(http, model, datetime.fromisoformat(first["computed_at"]))


def _round_after(http: httpx2.Client, model: str, after: datetime) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def scored() -> bool:
        report = drift_report(http, model)
        computed = report["computed_at"]
        if computed is None or datetime.fromisoformat(computed) <= after:
            return False
        found.update(report)
        return True

    assert wait_until(scored, seconds=60), f"no scoring round of {model} after {after}"
    return found


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: httpx2.Client) -> Samples:
    """Every sample on /metrics, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(http.get("/metrics").text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


# --- the independent computation -----------------------------------------------------------


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """sum((a - e) ln(a / e)), an empty share on either side counting as EPSILON."""
    total = []
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, EPSILON), max(a, EPSILON)
        total.append((a - e) * math.log(a / e))
    return math.fsum(total)


def numeric_psi(profile: dict[str, Any], values: Sequence[float]) -> float:
    """Bin i holds the values with exactly i edges at or below them."""
    edges = profile["edges"]
    bins = Counter(sum(edge <= value for edge in edges) for value in values)
    return psi(profile["shares"], [bins[i] / len(values) for i in range(len(edges) + 1)])


def categorical_psi(profile: dict[str, Any], values: Sequence[str]) -> float:
    """The training categories, then one bin for every category training never saw."""
    frequencies: dict[str, float] = profile["frequencies"]
    counts = Counter(values)
    seen = [counts[category] / len(values) for category in frequencies]
    unseen = sum(n for category, n in counts.items() if category not in frequencies)
    return psi([*frequencies.values(), 0.0], [*seen, unseen / len(values)])


def expected_scores(
    metadata: dict[str, Any], rows: Sequence[Row]
) -> dict[str, tuple[float, float | None, float | None]]:
    """Per feature, (PSI, KS, KS p-value) of ``rows`` against the metadata's profile."""
    scores: dict[str, tuple[float, float | None, float | None]] = {}
    for name in FEATURES:
        profile = metadata["reference_profile"][name]
        values = [row[name] for row in rows]
        if name == CATEGORICAL:
            scores[name] = (categorical_psi(profile, values), None, None)
        else:
            ks = ks_2samp(values, profile["sample"])
            scores[name] = (numeric_psi(profile, values), float(ks.statistic), float(ks.pvalue))
    return scores


def expected_quality(metadata: dict[str, Any], rows: Sequence[Row]) -> dict[str, dict[str, int]]:
    """Per feature, the data-quality issues of ``rows``: numbers outside the metadata's
    training min/max, categories outside its categories."""
    quality = {}
    for spec in metadata["features"]:
        values = [row[spec["name"]] for row in rows]
        if spec["dtype"] == "category":
            unseen = sum(value not in spec["categories"] for value in values)
            quality[spec["name"]] = {"missing": 0, "out_of_range": 0, "unseen_category": unseen}
        else:
            outside = sum(not spec["min"] <= value <= spec["max"] for value in values)
            quality[spec["name"]] = {"missing": 0, "out_of_range": outside, "unseen_category": 0}
    return quality


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {feature["name"]: feature for feature in report["features"]}


# --- one server: rows like training's to one model, shifted ones to another ------------------


@dataclass(frozen=True)
class Served:
    trained: Trained
    sent: dict[str, list[Row]]
    reports: dict[str, dict[str, Any]]
    samples: Samples


@pytest.fixture(scope="module")
def served(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """1000 rows like training's sent to `steady` and 1000 shifted ones to `moved` (windows of
    1000: each window holds exactly what was sent), their settled reports and /metrics."""
    sent = {
        "steady": sensor_rows(WINDOW, seed=2),
        "moved": shifted(sensor_rows(WINDOW, seed=3), seed=4),
    }
    work = tmp_path_factory.mktemp("drift-served")
    with (
        drift_server(trained, work, WINDOW) as server,
        httpx2.Client(base_url=server.url, timeout=30) as http,
    ):
        for model, rows in sent.items():
            send(http, model, rows)
        reports = {model: settled_report(http, model) for model in sent}
        samples = scrape(http)
        yield Served(trained, sent, reports, samples)


def test_the_model_accepts_unseen_categories(trained: Trained) -> None:
    """What the shifted rows rely on: the recipe's one-hot encoder ignores unseen categories,
    so the schema takes them (open_categories) and the window can count them."""
    features = {f["name"]: f for f in trained.metadata("moved")["features"]}
    assert list(features) == list(FEATURES)
    assert features[CATEGORICAL]["open_categories"] is True
    assert sorted(features[CATEGORICAL]["categories"]) == sorted(COLOURS)
    assert all(features[name]["dtype"] == "float" for name in NUMERIC)


def test_rows_like_training_flag_no_feature(served: Served) -> None:
    report = served.reports["steady"]
    assert report["status"] == "ok", report
    assert report["reason"] is None
    assert (report["window_rows"], report["window_max_rows"], report["min_rows"]) == (
        WINDOW,
        WINDOW,
        MIN_ROWS,
    )
    assert (report["reference_rows"], report["reference_source"]) == (3000, "metadata")
    features = by_name(report)
    assert list(features) == list(FEATURES)
    assert {name: f["status"] for name, f in features.items()} == dict.fromkeys(FEATURES, "ok")
    assert all(f["psi"] < report["psi_warn"] for f in features.values())
    assert all(f["window_values"] == WINDOW for f in features.values())
    assert features[CATEGORICAL]["ks"] is None
    assert features[CATEGORICAL]["quality"]["unseen_category"] == 0
    assert 0.5 < report["estimated_accuracy"] <= 1.0
    labels = {"model": "steady", "version": "1"}
    assert sample(served.samples, "steward_model_drift_status", **labels) == 0


def test_shifted_rows_flag_exactly_the_moved_features(served: Served) -> None:
    report = served.reports["moved"]
    features = by_name(report)
    statuses = {name: f["status"] for name, f in features.items()}
    assert statuses == {"pressure": "drift", "width": "ok", "temperature": "ok", "colour": "drift"}
    assert report["status"] == "drift"
    labels = {"model": "moved", "version": "1"}
    assert sample(served.samples, "steward_model_drift_status", **labels) == 2
    rows = served.sent["moved"]
    unseen = sum(row[CATEGORICAL] in UNSEEN for row in rows)
    assert 300 < unseen < 500  # 40% of 1000
    metadata = served.trained.metadata("moved")
    pressure = next(f for f in metadata["features"] if f["name"] == "pressure")
    beyond = sum(row["pressure"] > pressure["max"] for row in rows)
    assert beyond > 0  # the shift takes some values past the training maximum
    quality = {name: f["quality"] for name, f in features.items()}
    assert quality == expected_quality(metadata, rows)
    assert quality["colour"]["unseen_category"] == unseen
    assert quality["pressure"]["out_of_range"] == beyond  # none below the minimum, shifted up


def test_metrics_and_the_report_agree(served: Served) -> None:
    for model, report in served.reports.items():
        version = str(report["version"])
        labels = {"model": model, "version": version}
        assert sample(served.samples, "steward_drift_window_rows", **labels) == WINDOW
        assert (
            sample(served.samples, "steward_estimated_accuracy", **labels)
            == (report["estimated_accuracy"])
        )
        for feature in report["features"]:
            named = labels | {"feature": feature["name"]}
            assert sample(served.samples, "steward_feature_drift_psi", **named) == feature["psi"]
            assert sample(served.samples, "steward_feature_drift_ks", **named) == feature["ks"]
            for issue, count in feature["quality"].items():
                counted = sample(served.samples, "steward_data_quality_total", **named, issue=issue)
                assert counted == count, (model, feature["name"], issue)
    drift = [
        value
        for (name, _), value in served.samples.items()
        if name.startswith(("steward_feature_drift", "steward_data_quality", "steward_model_drift"))
    ]
    assert drift
    assert all(math.isfinite(value) for value in drift)


def test_psi_and_ks_match_an_independent_computation(served: Served) -> None:
    for model, report in served.reports.items():
        metadata = served.trained.metadata(model)
        expected = expected_scores(metadata, served.sent[model])
        for feature in report["features"]:
            psi_value, ks, pvalue = expected[feature["name"]]
            assert feature["psi"] == pytest.approx(psi_value, abs=1e-9, rel=0), feature
            if ks is None:
                assert (feature["ks"], feature["ks_pvalue"]) == (None, None)
            else:
                assert feature["ks"] == pytest.approx(ks, abs=1e-9, rel=0), feature
                assert feature["ks_pvalue"] == pytest.approx(pvalue, abs=1e-9, rel=1e-9)


def test_the_profile_is_the_training_parts(trained: Trained) -> None:
    """The reference profile against the rows it was made of: the CSV's training part, split
    as the metadata records (sklearn's train_test_split called here)."""
    metadata = trained.metadata("steady")
    frame = pd.read_csv(trained.csv)
    labels = frame.pop("label")
    split = metadata["training_data"]["split"]
    train, _ = train_test_split(
        np.arange(len(frame)),
        test_size=split["test_size"],
        random_state=split["seed"],
        stratify=labels if split["stratified"] else None,
    )
    part = frame.iloc[train]
    assert metadata["training_rows"] == len(part) == 3000
    specs = {f["name"]: f for f in metadata["features"]}
    for name in NUMERIC:
        profile, values = metadata["reference_profile"][name], part[name].to_numpy()
        assert profile["rows"] == 3000
        assert (specs[name]["min"], specs[name]["max"]) == (values.min(), values.max())
        # Deciles taken at training values; the largest value is no decile of 3000 distinct ones.
        edges = np.unique(np.quantile(values, np.arange(1, 10) / 10, method="inverted_cdf"))
        assert profile["edges"] == pytest.approx(edges.tolist(), abs=1e-12, rel=0)
        bins = Counter(sum(edge <= value for edge in profile["edges"]) for value in values)
        shares = [bins[i] / len(values) for i in range(len(profile["edges"]) + 1)]
        assert profile["shares"] == pytest.approx(shares, abs=1e-12, rel=0)
        assert all(0.09 < share < 0.11 for share in shares)  # deciles
        sample_values = profile["sample"]
        assert len(sample_values) == 200
        assert sample_values == sorted(sample_values)
        assert (sample_values[0], sample_values[-1]) == (values.min(), values.max())
        assert set(sample_values) <= set(values.tolist())
    frequencies = part[CATEGORICAL].value_counts(normalize=True).to_dict()
    profile = metadata["reference_profile"][CATEGORICAL]
    assert profile["rows"] == 3000
    assert profile["frequencies"] == pytest.approx(frequencies, abs=1e-12, rel=0)


STREAM_WINDOW = 4000
STREAM_WINDOWS = 20


def test_a_long_stream_keeps_the_window_bounded(trained: Trained, tmp_path: Path) -> None:
    """20 windows' worth of rows, the last window's worth shifted: the window never passes its
    size, its scores are the tail's alone and the data quality counts everything served. (That
    the rows it drops leave no memory behind is the next test's, in process.)"""
    metadata = trained.metadata("stream")
    labels = {"model": "stream", "version": "1"}
    tail: list[Row] = []
    counted = {
        name: dict.fromkeys(("missing", "out_of_range", "unseen_category"), 0) for name in FEATURES
    }
    with (
        drift_server(trained, tmp_path, STREAM_WINDOW) as server,
        httpx2.Client(base_url=server.url, timeout=30) as http,
    ):
        for window in range(1, STREAM_WINDOWS + 1):
            rows = sensor_rows(STREAM_WINDOW, seed=100 + window)
            if window == STREAM_WINDOWS:
                rows = tail = shifted(rows, seed=7)
            send(http, "stream", rows, batch=1000)
            for name, issues in expected_quality(metadata, rows).items():
                for issue, count in issues.items():
                    counted[name][issue] += count
            report = drift_report(http, "stream")
            assert report["window_max_rows"] == STREAM_WINDOW
            assert report["window_rows"] <= STREAM_WINDOW
            held = sample(scrape(http), "steward_drift_window_rows", **labels)
            assert held is None or held <= STREAM_WINDOW
        report = settled_report(http, "stream")
    assert report["window_rows"] == STREAM_WINDOW
    features = by_name(report)
    assert {name: f["status"] for name, f in features.items()} == {
        "pressure": "drift",
        "width": "ok",
        "temperature": "ok",
        "colour": "drift",
    }
    expected = expected_scores(metadata, tail)
    for name, feature in features.items():
        psi_value, ks, _ = expected[name]
        assert feature["psi"] == pytest.approx(psi_value, abs=1e-9, rel=0), name
        if ks is not None:
            assert feature["ks"] == pytest.approx(ks, abs=1e-9, rel=0), name
        assert feature["quality"] == counted[name]
    assert counted["colour"]["unseen_category"] == sum(row["colour"] in UNSEEN for row in tail)


HEAP_WINDOW = 1000
HEAP_WINDOWS = 50
LEFT_BEHIND_BYTES_PER_ROW = 16
"""What a row streamed may seem to leave behind on the heap: 800 kB over the 50,000 rows. What
fills once and then stays (a pool connection's cursors, the peak of short-lived classes
scikit-learn makes per call) was measured at 170 to 240 kB, flat from 90,000 rows to 170,000.
A row kept costs about 160 bytes (a tuple of three floats and a string), its id 80: a window
that kept its history leaves ten times the bound."""


def test_a_long_stream_leaves_nothing_behind_on_the_heap(trained: Trained, tmp_path: Path) -> None:
    """Once the window is full and warm, 50 more windows' worth of rows leave the Python heap
    where it was: the ring drops what it replaces, the prediction log what it wrote, and nothing
    on the request path keeps a little of each row. Measured in process with tracemalloc, which
    counts every live Python and NumPy allocation exactly. A server's RSS is no measure of it:
    glibc's arenas and SQLite's page cache grew it 5 to 15 MiB over 60,000 rows, varying run to
    run, and flat after about 100,000 rows."""
    settings = Settings(
        models_dir=trained.models,
        data_dir=tmp_path / "data",
        drift_window_rows=HEAP_WINDOW,
        drift_min_rows=MIN_ROWS,
        drift_interval_seconds=0.2,
    )
    seeds = iter(range(1000, 2000))

    def stream(client: TestClient, windows: int) -> None:
        for _ in range(windows):
            send(client, "stream", sensor_rows(HEAP_WINDOW, seed=next(seeds)), batch=HEAP_WINDOW)

    def live_bytes(client: TestClient) -> int:
        """Traced bytes alive once every row is written and the garbage collected: the least
        of five readings, so a scoring round's temporaries (it runs every 0.2 s) are out."""
        pending = "steward_prediction_log_pending_rows"
        assert wait_until(lambda: sample(scrape(client), pending) == 0)
        readings = []
        for _ in range(5):
            gc.collect()
            readings.append(tracemalloc.get_traced_memory()[0])
            time.sleep(0.1)
        return min(readings)

    assert not tracemalloc.is_tracing()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        stream(client, 5)  # the window full, the lazy imports done
        tracemalloc.start()
        try:
            stream(client, 15)  # what fills once (connections, caches) filled
            before = live_bytes(client)
            stream(client, HEAP_WINDOWS)
            after = live_bytes(client)
        finally:
            tracemalloc.stop()
        report = drift_report(client, "stream")
    assert report["window_rows"] == HEAP_WINDOW
    streamed = HEAP_WINDOWS * HEAP_WINDOW
    assert after - before < streamed * LEFT_BEHIND_BYTES_PER_ROW, (before, after)
