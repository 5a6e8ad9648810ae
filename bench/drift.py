"""What watching the inputs costs the requests (``bench/run.py --drift-only``, and a part of
``make bench``).

The request path's share of drift is one ``DriftWindow.append`` per answered request: the rows
into a ring and one range check per feature (app/drift_window.py); the scores are computed in
the background every STEWARD_DRIFT_INTERVAL_SECONDS. Two measurements:

- end to end: a real ``steward serve`` per mode, STEWARD_DRIFT false, true with the defaults,
  and true with scoring every INTERVAL_SECONDS (many rounds during a run), over ROUNDS
  interleaved rounds (off, on, on fast, then on fast, on, off; one server at a time). Each
  drives iris and breast-cancer (30 features, the widest row) at CONNECTIONS with one-row
  requests, then with BATCH_ROWS-row requests (rows/s: the append is per row). At the end of a
  run the drift report says the monitor was at work (its window full, its last scores recent).
- ``append`` alone, timed in this process with timeit on a window made as the server makes it
  (real metadata, the request model's rows, the model's own outputs, Prometheus counters):
  microseconds per row, with rows in the training range (no issue counted) and with every value
  out of range (every feature's counter incremented: the worst case).
"""

import json
import os
import subprocess
import timeit
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from load import Result, get, lua_post, wrk
from prometheus_client import CollectorRegistry
from server import STEWARD, free_port, serving

from app.drift_metrics import DriftMetrics
from app.drift_window import DriftWindow, capacity
from app.loading import LoadedModel, load_version
from app.prediction import infer
from app.settings import Settings

MODELS = ("iris", "breast-cancer")
CONNECTIONS = (1, 64)
BATCH_ROWS = 64
BATCH_CONNECTIONS = 8
ROUNDS = 2
INTERVAL_SECONDS = 1.0  # the fast mode's STEWARD_DRIFT_INTERVAL_SECONDS
MODES: dict[str, dict[str, str]] = {
    "off": {"STEWARD_DRIFT": "false"},
    "on": {"STEWARD_DRIFT": "true"},
    "on, 1 s": {"STEWARD_DRIFT": "true", "STEWARD_DRIFT_INTERVAL_SECONDS": str(INTERVAL_SECONDS)},
}
Cell = tuple[str, str, int | str]  # mode, model, connections or "batch"


@dataclass(frozen=True)
class Watching:
    """A drift report at the end of a run with drift on: the monitor kept rows and scored."""

    mode: str
    model: str
    status: str
    window_rows: int
    scored_seconds_ago: float | None  # None: never scored


@dataclass
class DriftCost:
    """The wrk runs per cell, the reports that show drift was at work, the load around."""

    runs: dict[Cell, list[Result]] = field(default_factory=dict)
    watching: list[Watching] = field(default_factory=list)
    appends: list["AppendTiming"] = field(default_factory=list)
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute, at the start and at the end


def drift_cost(work: Path, seconds: float) -> DriftCost:
    """Everything under ``work``: a registry of its own (the shadow part leaves iris with a
    candidate and a traffic policy), each server's store and log, the wrk scripts."""
    work.mkdir()
    models_dir = work / "models"
    subprocess.run([STEWARD, "--models-dir", models_dir, "train", "demo"], check=True,
                   capture_output=True)  # fmt: skip
    cost = DriftCost(appends=append_timings(models_dir))
    began_load = os.getloadavg()[0]
    scripts = {
        (name, rows): lua_post(request_body(models_dir, name, rows), work, f"drift-{name}-{rows}")
        for name in MODELS
        for rows in (1, BATCH_ROWS)
    }
    for round_ in range(ROUNDS):
        # off, on, on fast, then on fast, on, off: a trend in the machine's other load (other
        # test runs on this shared machine) weighs on every mode alike.
        order = list(MODES.items()) if round_ % 2 == 0 else list(MODES.items())[::-1]
        for mode, overrides in order:
            folder = work / f"{round_}-{mode.replace(', ', '-').replace(' ', '')}"
            folder.mkdir()
            port = free_port()
            env = (
                os.environ
                | overrides
                | {
                    "STEWARD_MODELS_DIR": str(models_dir),
                    "STEWARD_DATA_DIR": str(folder / "data"),
                    "STEWARD_LOG_LEVEL": "warning",
                }
            )
            argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
            log = folder / "steward.log"
            with serving(argv, port=port, env=env, log=log, ready="/readyz") as steward:
                for name in MODELS:  # warm-up
                    wrk(f"{steward.url}/predict/{name}", scripts[(name, 1)], 8, 2)
                for name in MODELS:
                    url = f"{steward.url}/predict/{name}"
                    for c in CONNECTIONS:
                        result = wrk(url, scripts[(name, 1)], c, seconds)
                        cost.runs.setdefault((mode, name, c), []).append(result)
                    batch = wrk(url, scripts[(name, BATCH_ROWS)], BATCH_CONNECTIONS, seconds)
                    cost.runs.setdefault((mode, name, "batch"), []).append(batch)
                if mode != "off":
                    cost.watching += [watching(steward.url, mode, name) for name in MODELS]
                steward.stop(timeout=120)
    cost.load_average = (began_load, os.getloadavg()[0])
    return cost


def watching(url: str, mode: str, name: str) -> Watching:
    report = json.loads(get(f"{url}/models/{name}/drift"))
    computed = report["computed_at"]
    ago = None
    if computed is not None:
        ago = (datetime.now(UTC) - datetime.fromisoformat(computed)).total_seconds()
    return Watching(mode, name, report["status"], report["window_rows"], ago)


def request_body(models_dir: Path, name: str, rows: int) -> str:
    """``rows`` copies of a row in the middle of the training range, as the rest of the bench
    sends."""
    return json.dumps({"instances": [middle_row(models_dir, name)] * rows})


def middle_row(models_dir: Path, name: str) -> dict[str, float]:
    metadata = json.loads((models_dir / name / "1" / "metadata.json").read_text())
    return {f["name"]: round((f["min"] + f["max"]) / 2, 4) for f in metadata["features"]}


def outside_row(models_dir: Path, name: str) -> dict[str, float]:
    """Every value one training span above its range: accepted (STEWARD_INPUT_RANGE_MULTIPLE
    spans), counted as out_of_range."""
    metadata = json.loads((models_dir / name / "1" / "metadata.json").read_text())
    return {f["name"]: round(2 * f["max"] - f["min"], 4) for f in metadata["features"]}


@dataclass(frozen=True)
class AppendCase:
    """A window as the server makes one for a version, and one request's rows for it."""

    model: LoadedModel
    window: DriftWindow
    rows: list[tuple[Any, ...]]
    outputs: list[Any]

    def append(self) -> None:
        self.window.append(self.rows, self.outputs, 0.0)


def append_case(models_dir: Path, name: str, rows: int, *, outside: bool = False) -> AppendCase:
    """Version 1 of ``name`` loaded and its window made with the server's defaults (Settings()),
    a request of ``rows`` copies of the middle row (or, ``outside``, of a row out of range)
    validated by its request model and predicted by its estimator."""
    settings = Settings(models_dir=models_dir)
    model = load_version(
        models_dir,
        name,
        1,
        max_instances=settings.max_instances,
        input_range_multiple=settings.input_range_multiple,
        target_range_multiple=settings.target_range_multiple,
    )
    metrics = DriftMetrics(
        CollectorRegistry(), settings.drift_feature_labels, settings.drift_top_features
    )
    features = model.metadata.features
    window = DriftWindow(
        features,
        capacity(settings.drift_window_rows, model.metadata),
        metrics.counters(model.metadata),
    )
    row = (outside_row if outside else middle_row)(models_dir, name)
    parsed = model.rows(json.dumps({"instances": [row] * rows}).encode())
    return AppendCase(model, window, parsed, infer(model, parsed))


@dataclass(frozen=True)
class AppendTiming:
    model: str
    features: int
    rows: int  # per append (one request)
    outside: bool
    microseconds_per_row: float


def time_append(models_dir: Path, name: str, rows: int, *, outside: bool = False) -> AppendTiming:
    """The best of 5 timeit repeats (each about 0.2 s or more), per row appended. The same rows
    each call: the append's own work. In the server each append also frees the rows it evicts
    (new objects each request), about twice this per row (docs/performance.md)."""
    case = append_case(models_dir, name, rows, outside=outside)
    timer = timeit.Timer(case.append)
    number, _ = timer.autorange()
    best = min(timer.repeat(repeat=5, number=number)) / number
    features = len(case.model.metadata.features)
    return AppendTiming(name, features, rows, outside, best / rows * 1e6)


def append_timings(models_dir: Path) -> list[AppendTiming]:
    return [
        time_append(models_dir, name, rows, outside=outside)
        for name in MODELS
        for outside in (False, True)
        for rows in (1, BATCH_ROWS)
    ]
