"""``make bench``: Steward under load next to the naive route, same machine, same run.

Starts the real server as users run it (``steward serve``: demo models, SQLite prediction log,
metrics on), drives it with wrk on loopback, then does the same to ``bench/naive.py``, and
prints one table: model x connections x {req/s, p50, p99, errors} for both, and the ratios.
Also 64-row requests (rows/s), the feedback path (feedbacks/s), prediction-log rows written
vs acknowledged, the deepest log backlog seen and the server's peak RSS.

Then the cost of shadowing: iris at 1 and 64 connections with its traffic policy ``none`` and
``shadow`` (a second iris version as candidate predicting every request's rows off the response
path), interleaved over two rounds. ``--shadow-only`` runs just that part.

Last, the cost of a retraining (bench/retrain.py): iris at 1 and 64 connections with no retrain
job and while retrain jobs run one after the other, interleaved over two rounds; the job's
duration alone and under load. ``--retrain-only`` runs just that part.

Then the cost of watching the inputs (bench/drift.py): iris and breast-cancer at 1 and 64
connections and with 64-row requests, STEWARD_DRIFT false, true, and true with scoring every
second, interleaved over two rounds; and ``DriftWindow.append`` alone, per row. ``--drift-only``
runs just that part.

``--soak SECONDS`` instead runs iris at 64 connections for that long and prints RSS over time.
"""

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from drift import BATCH_CONNECTIONS as DRIFT_BATCH_CONNECTIONS
from drift import BATCH_ROWS as DRIFT_BATCH_ROWS
from drift import CONNECTIONS as DRIFT_CONNECTIONS
from drift import MODELS as DRIFT_MODELS
from drift import MODES as DRIFT_MODES
from drift import ROUNDS as DRIFT_ROUNDS
from drift import drift_cost
from load import Result, get, lua_feedback, lua_post, post_json, wrk
from prometheus_client.parser import text_string_to_metric_families
from retrain import CONNECTIONS as RETRAIN_CONNECTIONS
from retrain import MODES as RETRAIN_MODES
from retrain import ROUNDS as RETRAIN_ROUNDS
from retrain import retrain_cost
from server import STEWARD, Server, free_port, serving

BIN = Path(sys.executable).parent
BENCH = Path(__file__).resolve().parent
MODELS = ("iris", "breast-cancer", "diabetes")
CONNECTIONS = (1, 8, 64)
BATCH_ROWS = 64
BATCH_CONNECTIONS = 8
FEEDBACK_CONNECTIONS = 8


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--connections", default=",".join(map(str, CONNECTIONS)))
    parser.add_argument("--soak", type=int, default=0, help="run the RSS soak instead")
    parser.add_argument("--shadow-only", action="store_true", help="only the shadow cost")
    parser.add_argument("--retrain-only", action="store_true", help="only the retraining cost")
    parser.add_argument("--drift-only", action="store_true", help="only the drift cost")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as folder:
        bench(Path(folder), args)


def bench(work: Path, args: argparse.Namespace) -> None:
    """Everything the run writes (registry, prediction log, wrk scripts) goes under ``work``."""
    models_dir = work / "models"
    subprocess.run(
        [STEWARD, "--models-dir", models_dir, "train", "demo"],
        check=True,
        capture_output=True,
    )
    print(machine())
    if args.soak:
        soak(work, models_dir, args.soak)
        return
    if args.shadow_only:
        shadow_cost(work, models_dir, args.seconds)
        return
    if args.retrain_only:
        print_retrain_cost(work, args.seconds)
        return
    if args.drift_only:
        print_drift_cost(work, args.seconds)
        return
    models = args.models.split(",")
    connections = [int(c) for c in args.connections.split(",")]
    scripts = {
        (name, rows): lua_post(body(models_dir, name, rows), work, f"{name}-{rows}")
        for name in models
        for rows in (1, BATCH_ROWS)
    }

    with start_steward(work, models_dir) as steward:
        watch = Watch(lambda: gauge(steward.url, "steward_prediction_log_pending_rows"))
        ours = drive(steward.url, scripts, models, connections, args.seconds)
        feedback = drive_feedback(steward.url, work, args.seconds)
        watch.stop()
        acknowledged = counter(steward.url, "steward_predictions_total")
        peak_rss = steward.peak_rss_mib()
        steward.stop(timeout=120)  # the graceful shutdown writes the whole log
    written = rows_written(work / "data")

    with start_naive(work, models_dir) as naive:
        theirs = drive(naive.url, scripts, models, connections, args.seconds)
        naive_rss = naive.peak_rss_mib()

    print_table(ours, theirs, models, connections)
    print()
    print(
        f"feedback, {FEEDBACK_CONNECTIONS} connections: {feedback.rate:,.0f} feedbacks/s, "
        f"p50 {feedback.p50_ms:.2f} ms, p99 {feedback.p99_ms:.2f} ms, {feedback.errors} errors"
    )
    lost = acknowledged - written
    print(
        f"prediction log: {acknowledged:,} rows acknowledged, {written:,} written "
        f"({'none lost' if lost == 0 else f'{lost:,} MISSING'}); "
        f"deepest backlog {watch.peak:,.0f} rows"
    )
    print(f"peak RSS: steward {peak_rss:.0f} MiB, naive {naive_rss:.0f} MiB")
    print()
    shadow_cost(work, models_dir, args.seconds)
    print()
    print_retrain_cost(work, args.seconds)
    print()
    print_drift_cost(work, args.seconds)


SHADOW_CONNECTIONS = (1, 64)
SHADOW_ROUNDS = 2


def shadow_cost(work: Path, models_dir: Path, seconds: float) -> None:
    """iris with no traffic policy, then with its candidate in shadow on every request, at 1 and
    64 connections, interleaved over SHADOW_ROUNDS rounds on one server; the policy is set with
    `steward traffic` and reaches the server through its rescan, as in production."""
    subprocess.run([STEWARD, "--models-dir", models_dir, "train", "demo"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run([STEWARD, "--models-dir", models_dir, "promote", "iris", "2", "--alias",
                    "candidate"], check=True, capture_output=True)  # fmt: skip
    script = lua_post(body(models_dir, "iris", 1), work, "shadow-iris")
    runs: dict[tuple[str, int], list[Result]] = {}
    (work / "shadow").mkdir()
    with start_steward(work / "shadow", models_dir) as steward:
        wrk(f"{steward.url}/predict/iris", script, 8, 2)
        for _ in range(SHADOW_ROUNDS):
            for mode in ("none", "shadow"):
                set_traffic(steward.url, models_dir, mode)
                for c in SHADOW_CONNECTIONS:
                    result = wrk(f"{steward.url}/predict/iris", script, c, seconds)
                    runs.setdefault((mode, c), []).append(result)
        served = counter(steward.url, "steward_predictions_total")
        shadowed = counter(steward.url, "steward_shadow_predictions_total")
        failed = counter(steward.url, "steward_shadow_failures_total")
        steward.stop(timeout=120)
    rows = []
    for c in SHADOW_CONNECTIONS:
        off, on = runs[("none", c)], runs[("shadow", c)]
        p50 = (statistics.median(r.p50_ms for r in off), statistics.median(r.p50_ms for r in on))
        p99 = (statistics.median(r.p99_ms for r in off), statistics.median(r.p99_ms for r in on))
        rate = (statistics.median(r.rate for r in off), statistics.median(r.rate for r in on))
        rows.append((
            str(c), f"{rate[0]:,.0f}", f"{rate[1]:,.0f}", f"{p50[0]:.2f}", f"{p50[1]:.2f}",
            f"{p50[1] - p50[0]:+.2f}", f"{p99[0]:.2f}", f"{p99[1]:.2f}", f"{p99[1] - p99[0]:+.2f}",
            str(sum(r.errors for r in off + on)),
        ))  # fmt: skip
    print(f"shadow cost, iris, median of {SHADOW_ROUNDS} interleaved rounds of {seconds} s:")
    print_markdown(
        ("conns", "req/s off", "req/s shadow", "p50 off", "p50 shadow", "p50 +ms", "p99 off",
         "p99 shadow", "p99 +ms", "err"),
        rows,
    )  # fmt: skip
    print(f"served rows {served:,}; shadowed {shadowed:,}; shadow failures {failed:,}")


def print_retrain_cost(work: Path, seconds: float) -> None:
    """Predictions with no retrain job and while retrain jobs run (bench/retrain.py)."""
    cost = retrain_cost(work / "retrain", seconds)
    rows = []
    for mode in RETRAIN_MODES:
        for c in RETRAIN_CONNECTIONS:
            runs = cost.runs[(mode, c)]
            rows.append((
                "no retrain" if mode == "idle" else "retrain running", str(c),
                f"{statistics.median(r.rate for r in runs):,.0f}",
                f"{statistics.median(r.p50_ms for r in runs):.2f}",
                f"{statistics.median(r.p99_ms for r in runs):.2f}",
                f"{max(r.p99_ms for r in runs):.2f}", str(sum(r.errors for r in runs)),
            ))  # fmt: skip
    print(
        f"predictions during a retrain, iris, median of {RETRAIN_ROUNDS} interleaved rounds "
        f"of {seconds} s; {cost.pinning}:"
    )
    print_markdown(("load", "conns", "req/s", "p50 ms", "p99 ms", "worst p99 ms", "err"), rows)
    durations = sorted(j.seconds for j in cost.jobs)
    assert cost.alone is not None
    data = cost.alone.data
    print(
        f"retrain job: {cost.alone.seconds:.1f} s alone ({data['labelled']:,} labelled rows, "
        f"{data['trained_on']:,} trained on, {data['held_out']:,} held out as recent); "
        f"{len(durations)} jobs under load, {durations[0]:.1f}-{durations[-1]:.1f} s "
        f"(median {statistics.median(durations):.1f} s), running during "
        f"{cost.covered_seconds / cost.window_seconds:.0%} of the retrain windows"
    )
    start, end = cost.load_average
    print(f"load average (1 min) {start:.2f} at the start, {end:.2f} at the end")


def print_drift_cost(work: Path, seconds: float) -> None:
    """Predictions with STEWARD_DRIFT off and on (bench/drift.py), and the append alone."""
    cost = drift_cost(work / "drift", seconds)
    rows = []
    cells: list[int | str] = [*DRIFT_CONNECTIONS, "batch"]
    for name in DRIFT_MODELS:
        for c in cells:
            scale = DRIFT_BATCH_ROWS if c == "batch" else 1
            label = f"{DRIFT_BATCH_CONNECTIONS} ({DRIFT_BATCH_ROWS} rows/req, rows/s)"
            off = cost.runs[("off", name, c)]
            for mode in DRIFT_MODES:
                runs = cost.runs[(mode, name, c)]
                rate = statistics.median(r.rate for r in runs) * scale
                p50 = statistics.median(r.p50_ms for r in runs)
                p99 = statistics.median(r.p99_ms for r in runs)
                base = statistics.median(r.rate for r in off) * scale
                rows.append((
                    name, label if c == "batch" else str(c), mode, f"{rate:,.0f}",
                    f"{rate / base:.3f}", f"{p50:.2f}",
                    f"{p50 / statistics.median(r.p50_ms for r in off):.3f}", f"{p99:.2f}",
                    f"{p99 / statistics.median(r.p99_ms for r in off):.3f}",
                    str(sum(r.errors for r in runs)),
                ))  # fmt: skip
    print(
        f"drift cost, median of {DRIFT_ROUNDS} interleaved rounds of {seconds} s "
        "(ratios: to drift off):"
    )
    print_markdown(
        ("model", "conns", "drift", "req/s", "ratio", "p50 ms", "ratio", "p99 ms", "ratio", "err"),
        rows,
    )
    for w in cost.watching:
        scored = "never" if w.scored_seconds_ago is None else f"{w.scored_seconds_ago:.1f} s ago"
        print(
            f"drift {w.mode}, {w.model} at the end: {w.status}, {w.window_rows:,} rows in the "
            f"window, last scored {scored}"
        )
    start, end = cost.load_average
    print(f"load average (1 min) {start:.2f} at the start, {end:.2f} at the end")
    print()
    print("DriftWindow.append alone (timeit, best of 5), microseconds per row:")
    print_markdown(
        ("model", "features", "rows/append", "values", "us/row"),
        [
            (t.model, str(t.features), str(t.rows),
             "all out of range" if t.outside else "in range", f"{t.microseconds_per_row:.2f}")
            for t in cost.appends
        ],
    )  # fmt: skip


def set_traffic(url: str, models_dir: Path, mode: str) -> None:
    """Set iris' policy with the CLI and wait for the server's rescan to apply it."""
    subprocess.run([STEWARD, "--models-dir", models_dir, "traffic", "iris", mode], check=True,
                   capture_output=True)  # fmt: skip
    deadline = time.monotonic() + 30

    def applied() -> bool:  # the policy read, and its candidate loaded and warmed up
        traffic = json.loads(get(f"{url}/models/iris"))["traffic"]
        return bool(traffic["mode"] == mode and (mode == "none" or traffic["active"]))

    while not applied():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not apply traffic {mode} within 30 s")
        time.sleep(0.2)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"machine: {cores} cores, {cpu}; Python {platform.python_version()}; wrk -t1 on loopback"


def body(models_dir: Path, name: str, rows: int) -> str:
    """A request of ``rows`` copies of a row in the middle of the training range."""
    metadata = json.loads((models_dir / name / "1" / "metadata.json").read_text())
    row = {f["name"]: round((f["min"] + f["max"]) / 2, 4) for f in metadata["features"]}
    return json.dumps({"instances": [row] * rows})


def start_steward(work: Path, models_dir: Path) -> AbstractContextManager[Server]:
    port = free_port()
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(work / "data"),
        "STEWARD_LOG_LEVEL": "warning",
    }
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    return serving(argv, port=port, env=env, log=work / "steward.log", ready="/readyz")


def start_naive(work: Path, models_dir: Path) -> AbstractContextManager[Server]:
    port = free_port()
    argv: list[str | Path] = [
        BIN / "uvicorn", "--factory", "naive:create_app", "--app-dir", BENCH,
        "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    env = os.environ | {"NAIVE_MODELS_DIR": str(models_dir)}
    return serving(argv, port=port, env=env, log=work / "naive.log", ready="/docs")


Key = tuple[str, int | str]


def drive(
    url: str,
    scripts: dict[tuple[str, int], Path],
    models: Sequence[str],
    connections: Sequence[int],
    seconds: float,
) -> dict[Key, Result]:
    """Every model at every concurrency, then 64-row requests; a short warm-up first."""
    wrk(f"{url}/predict/{models[0]}", scripts[(models[0], 1)], 8, 2)
    results: dict[Key, Result] = {}
    for name in models:
        for c in connections:
            results[(name, c)] = wrk(f"{url}/predict/{name}", scripts[(name, 1)], c, seconds)
        batch = wrk(
            f"{url}/predict/{name}", scripts[(name, BATCH_ROWS)], BATCH_CONNECTIONS, seconds
        )
        results[(name, "batch")] = batch
    return results


def drive_feedback(url: str, work: Path, seconds: float) -> Result:
    """Label fresh iris predictions, one id per request (ids logged first, more than needed)."""
    row = json.loads(body(work / "models", "iris", 1))["instances"][0]
    ids: list[str] = []
    for _ in range(400):
        response = post_json(f"{url}/predict/iris", {"instances": [row] * BATCH_ROWS})
        ids.extend(p["id"] for p in response["predictions"])
    ids_file = work / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    return wrk(
        f"{url}/feedback", lua_feedback(ids_file, "setosa", work), FEEDBACK_CONNECTIONS, seconds
    )


def print_table(
    ours: dict[Key, Result],
    theirs: dict[Key, Result],
    models: Sequence[str],
    connections: Sequence[int],
) -> None:
    header = (
        "model",
        "conns",
        "steward req/s",
        "p50 ms",
        "p99 ms",
        "err",
        "naive req/s",
        "p50 ms",
        "p99 ms",
        "err",
        "req/s ratio",
        "p50 ratio",
        "p99 ratio",
    )
    rows = []
    columns: list[int | str] = [*connections, "batch"]
    for name in models:
        for c in columns:
            s, n = ours[(name, c)], theirs[(name, c)]
            scale = BATCH_ROWS if c == "batch" else 1
            label = f"{BATCH_CONNECTIONS} ({BATCH_ROWS} rows/req, rows/s)" if c == "batch" else c
            rows.append((
                name, str(label), f"{s.rate * scale:,.0f}", f"{s.p50_ms:.2f}", f"{s.p99_ms:.2f}",
                str(s.errors), f"{n.rate * scale:,.0f}", f"{n.p50_ms:.2f}", f"{n.p99_ms:.2f}",
                str(n.errors), f"{s.rate / n.rate:.2f}", f"{s.p50_ms / n.p50_ms:.2f}",
                f"{s.p99_ms / n.p99_ms:.2f}",
            ))  # fmt: skip
    print_markdown(header, rows)


def print_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        print("| " + " | ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def soak(work: Path, models_dir: Path, seconds: float) -> None:
    """iris at 64 connections for ``seconds``; RSS every tenth of the run; log kept up?"""
    script = lua_post(body(models_dir, "iris", 1), work, "soak")
    samples: list[tuple[float, float]] = []
    with start_steward(work, models_dir) as steward:
        wrk(f"{steward.url}/predict/iris", script, 8, 2)
        started = time.monotonic()
        sampler = Watch(
            steward.rss_mib,
            interval=seconds / 10,
            on_sample=lambda v: samples.append((time.monotonic() - started, v)),
        )
        result = wrk(f"{steward.url}/predict/iris", script, 64, seconds)
        sampler.stop()
        acknowledged = counter(steward.url, "steward_predictions_total")
        steward.stop(timeout=120)
    written = rows_written(work / "data")
    print_markdown(("t (s)", "RSS MiB"), [(f"{t:.0f}", f"{v:.1f}") for t, v in samples])
    settled = [v for t, v in samples if t >= seconds / 10] or [v for _, v in samples]
    spread = (max(settled) - min(settled)) / min(settled) * 100
    print(
        f"iris, 64 connections, {seconds:.0f} s: {result.rate:,.0f} req/s, "
        f"p99 {result.p99_ms:.1f} ms, {result.errors} errors; RSS after the first tenth "
        f"{min(settled):.1f}-{max(settled):.1f} MiB (spread {spread:.1f} %)"
    )
    print(f"prediction log: {acknowledged:,} acknowledged, {written:,} written")


class Watch:
    """Samples ``read`` every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(
        self,
        read: Callable[[], float],
        interval: float = 0.5,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        self.peak = 0.0
        self._read = read
        self._on_sample = on_sample
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while True:
            value = self._read()
            self.peak = max(self.peak, value)
            if self._on_sample is not None:
                self._on_sample(value)
            if self._stopped.wait(interval):
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def samples(url: str, name: str) -> list[Any]:
    text = get(f"{url}/metrics").decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def gauge(url: str, name: str) -> float:
    return float(sum(s.value for s in samples(url, name)))


def counter(url: str, name: str) -> int:
    return int(sum(s.value for s in samples(url, name)))


def rows_written(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "steward.db") as conn:
        count: int = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        return count


if __name__ == "__main__":
    main()
