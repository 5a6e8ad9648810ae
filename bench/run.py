"""``make bench``: Steward under load next to hand-written routes, same machine, same run.

First the main table (bench/speed.py): ``steward serve`` as users run it and the three
baselines of bench/naive.py (NumPy rows in a sync route, the same as ``async def``, a DataFrame
per request), one process each, two interleaved rounds, the server and wrk pinned to different
cores when there are two: model x connections x {req/s, p50, p99, errors, server CPU per
request} and the ratios to the NumPy route. Also 64-row requests (rows/s), the feedback path
(feedbacks/s), prediction-log rows written vs acknowledged, the deepest log backlog seen and
each server's peak RSS. ``--speed-only`` runs just that part.

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

Last, the model call alone (bench/twins.py): ``infer`` on scikit-learn and on each version's
compiled twin, in process, 1 and 64 rows. ``--twins-only`` runs just that part.

Then a prediction-log retention pass (bench/retention.py): iris at 8 connections on a store of
a million old rows, retention off vs while one pass deletes them all; the pass's length.
``--retention-only`` runs just that part.

Last, one worker against two (bench/workers.py): ``steward serve --workers 1`` and ``2`` on iris
at 64 connections, interleaved over two rounds, and the ratio of their req/s; the server and wrk
share every core (how, and why, in bench/workers.py). ``--workers-only`` runs just that part.

``--soak SECONDS`` instead runs iris at 64 connections for that long and prints RSS over time.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from drift import BATCH_CONNECTIONS as DRIFT_BATCH_CONNECTIONS
from drift import BATCH_ROWS as DRIFT_BATCH_ROWS
from drift import CONNECTIONS as DRIFT_CONNECTIONS
from drift import MODELS as DRIFT_MODELS
from drift import MODES as DRIFT_MODES
from drift import ROUNDS as DRIFT_ROUNDS
from drift import drift_cost, request_body
from load import Result, get, lua_post, wrk
from report import machine, print_markdown
from retention import CONNECTIONS as RETENTION_CONNECTIONS
from retention import ROWS as RETENTION_ROWS
from retention import retention_cost
from retrain import CONNECTIONS as RETRAIN_CONNECTIONS
from retrain import MODES as RETRAIN_MODES
from retrain import ROUNDS as RETRAIN_ROUNDS
from retrain import retrain_cost
from scrape import Watch, counter, rows_written
from server import STEWARD
from speed import measure_speed, print_speed, start_steward
from twins import twins_cost
from workers import CONNECTIONS as WORKERS_CONNECTIONS
from workers import workers_cost

MODELS = ("iris", "breast-cancer", "diabetes")
CONNECTIONS = (1, 8, 64)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--connections", default=",".join(map(str, CONNECTIONS)))
    parser.add_argument("--soak", type=int, default=0, help="run the RSS soak instead")
    parser.add_argument("--speed-only", action="store_true", help="only the main table")
    parser.add_argument("--shadow-only", action="store_true", help="only the shadow cost")
    parser.add_argument("--retrain-only", action="store_true", help="only the retraining cost")
    parser.add_argument("--drift-only", action="store_true", help="only the drift cost")
    parser.add_argument("--twins-only", action="store_true", help="only the model call alone")
    parser.add_argument(
        "--retention-only", action="store_true", help="only the cost of a retention pass"
    )
    parser.add_argument("--workers-only", action="store_true", help="only one worker against two")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --workers-only")
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
    if args.twins_only:
        twins_cost()
        return
    if args.retention_only:
        print_retention_cost(work, args.seconds)
        return
    if args.workers_only:
        print_workers_cost(work, models_dir, args.seconds, args.rounds)
        return
    models = args.models.split(",")
    connections = [int(c) for c in args.connections.split(",")]
    speed = measure_speed(work / "speed", models_dir, models, connections, args.seconds)
    print_speed(speed, models, connections, args.seconds)
    if args.speed_only:
        return
    print()
    shadow_cost(work, models_dir, args.seconds)
    print()
    print_retrain_cost(work, args.seconds)
    print()
    print_drift_cost(work, args.seconds)
    print()
    twins_cost()
    print()
    print_retention_cost(work, args.seconds)
    print()
    print_workers_cost(work, models_dir, args.seconds, args.rounds)


def print_workers_cost(work: Path, models_dir: Path, seconds: float, rounds: int) -> None:
    """One worker against two (bench/workers.py)."""
    cost = workers_cost(work / "workers", models_dir, seconds, rounds)
    print(
        f"workers, iris at {WORKERS_CONNECTIONS} connections, median of {rounds} interleaved "
        f"rounds of {seconds} s; {cost.pinning}:"
    )
    print_markdown(
        ("workers", "req/s", "p50 ms", "p99 ms", "err"),
        [
            (str(n), f"{r.rate:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.errors))
            for n, r in ((n, cost.median(n)) for n in cost.runs)
        ],
    )
    print(f"2 workers ÷ 1: {cost.ratio:.2f}x the req/s (target: at least 1.7x)")


def print_retention_cost(work: Path, seconds: float) -> None:
    """Predictions with retention off and during a pass over a million rows (bench/retention.py)."""
    cost = retention_cost(work / "retention", seconds)
    off, during = cost.runs["off"], cost.runs["pass"]
    print(
        f"retention pass, iris at {RETENTION_CONNECTIONS} connections, {seconds} s each, "
        f"store of {RETENTION_ROWS:,} old rows ({cost.pinning}):"
    )
    print_markdown(
        ("retention", "req/s", "p50 ms", "p99 ms", "err"),
        [
            (name, f"{r.rate:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.errors))
            for name, r in (("off", off), ("during a pass", during))
        ],
    )
    print(
        f"pass: {RETENTION_ROWS:,} rows in {cost.pass_seconds:.1f} s under load "
        f"({RETENTION_ROWS / cost.pass_seconds:,.0f} rows/s, batches of {cost.batch_size:,}); "
        f"{cost.deleted_when_load_ended:,} deleted when the load ended; "
        f"store filled in {cost.fill_seconds:.1f} s"
    )


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
    script = lua_post(request_body(models_dir, "iris", 1), work, "shadow-iris")
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


def soak(work: Path, models_dir: Path, seconds: float) -> None:
    """iris at 64 connections for ``seconds``; RSS every tenth of the run; log kept up?"""
    script = lua_post(request_body(models_dir, "iris", 1), work, "soak")
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


if __name__ == "__main__":
    main()
