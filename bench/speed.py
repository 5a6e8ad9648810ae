"""The main table of ``make bench``: Steward and three hand-written baselines under the same
load, in the same run (``bench/run.py --speed-only`` runs just this).

Four servers, one process each: ``steward serve`` as users run it (validation, prediction ids,
the SQLite prediction log, metrics, drift monitoring at its default) and the three routes of
bench/naive.py (``numpy``, ``async``, ``dataframe``), each served by one uvicorn worker with the
same models loaded from the registry's joblib files. ROUNDS interleaved rounds (steward, numpy,
async, dataframe, then again), one server up at a time; each server gets a short warm-up per
model, then every model at every concurrency with one-row requests, then (steward and numpy
only) 64-row requests. Each cell is the median of its rounds.

With two cores or more the server runs on one core and wrk on another (``taskset``), so the
load generator does not take the server's CPU. Besides wrk's req/s and latency, each run reads
the server's CPU time (utime + stime from /proc, bench/cpu.py) before and after: CPU per request
holds up on a shared machine where the rates do not.

For Steward also: the feedback path (fresh iris ids, one per request), prediction-log rows
acknowledged (``steward_predictions_total`` before shutdown) against rows written (counted in
the SQLite file after the graceful shutdown), the deepest log backlog seen (sampled once a
second from /metrics: that scrape is part of Steward's CPU), and each server's peak RSS.
"""

import json
import os
import statistics
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cpu import Pinning, cpu_seconds, pinning
from drift import request_body
from load import Result, lua_feedback, lua_post, post_json, wrk
from report import print_markdown
from scrape import Watch, counter, gauge, rows_written
from server import STEWARD, Server, free_port, serving

BENCH = Path(__file__).resolve().parent
UVICORN = STEWARD.parent / "uvicorn"
BASELINES = {
    "numpy": "naive:create_numpy_app",
    "async": "naive:create_async_app",
    "dataframe": "naive:create_dataframe_app",
}
SERVERS = ("steward", *BASELINES)
REFERENCE = "numpy"  # the ratios are to this baseline
BATCH_SERVERS = ("steward", "numpy")
ROUNDS = 2
BATCH_ROWS = 64
BATCH_CONNECTIONS = 8
FEEDBACK_CONNECTIONS = 8
WARM_UP_SECONDS = 1
PENDING = "steward_prediction_log_pending_rows"
Cell = tuple[str, str, int | str]  # server, model, connections or "batch"


@dataclass(frozen=True)
class Run:
    """One wrk run and the CPU time the server (with its children) spent during it."""

    result: Result
    cpu_seconds: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / max(self.result.requests, 1) * 1e6


@dataclass
class Speed:
    """The runs per cell, Steward's own lines, and how the run was set up."""

    pinning: Pinning
    runs: dict[Cell, list[Run]] = field(default_factory=dict)
    feedback: list[Result] = field(default_factory=list)
    acknowledged: int = 0  # prediction-log rows, over Steward's rounds
    written: int = 0
    deepest_backlog: float = 0.0
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute, at the start and at the end


def measure_speed(
    work: Path, models_dir: Path, models: Sequence[str], connections: Sequence[int], seconds: float
) -> Speed:
    """Everything the servers write (stores, logs) and the wrk scripts go under ``work``."""
    work.mkdir()
    speed = Speed(pinning=pinning())
    began_load = os.getloadavg()[0]
    scripts = {
        (name, rows): lua_post(request_body(models_dir, name, rows), work, f"{name}-{rows}")
        for name in models
        for rows in (1, BATCH_ROWS)
    }
    for round_ in range(ROUNDS):
        for name in SERVERS:
            folder = work / f"{round_}-{name}"
            folder.mkdir()
            with start(name, folder, models_dir, speed.pinning.prefix()) as server:
                for model in models:
                    wrk(f"{server.url}/predict/{model}", scripts[(model, 1)], 8,
                        WARM_UP_SECONDS, speed.pinning.load)  # fmt: skip
                watch = (
                    Watch(partial(gauge, server.url, PENDING), 1.0) if name == "steward" else None
                )
                for model in models:
                    url = f"{server.url}/predict/{model}"
                    cells: list[tuple[int | str, int, int]] = [(c, c, 1) for c in connections]
                    if name in BATCH_SERVERS:
                        cells.append(("batch", BATCH_CONNECTIONS, BATCH_ROWS))
                    for cell, c, rows in cells:
                        run = measured(server, url, scripts[(model, rows)], c, seconds, speed)
                        speed.runs.setdefault((name, model, cell), []).append(run)
                rss = server.peak_rss_mib()
                speed.peak_rss_mib[name] = max(speed.peak_rss_mib.get(name, 0.0), rss)
                if watch is not None:
                    watch.stop()
                    steward_lines(speed, server, watch, models_dir, folder, seconds)
    speed.load_average = (began_load, os.getloadavg()[0])
    return speed


def steward_lines(
    speed: Speed, steward: Server, watch: Watch, models_dir: Path, work: Path, seconds: float
) -> None:
    """After a round's runs: the feedback path, then the log's rows acknowledged against those
    in the SQLite file after a graceful shutdown (which writes the whole log)."""
    speed.deepest_backlog = max(speed.deepest_backlog, watch.peak)
    speed.feedback.append(drive_feedback(steward.url, models_dir, work, seconds, speed.pinning))
    speed.acknowledged += counter(steward.url, "steward_predictions_total")
    rss = max(speed.peak_rss_mib.get("steward", 0.0), steward.peak_rss_mib())
    speed.peak_rss_mib["steward"] = rss
    steward.stop(timeout=120)
    speed.written += rows_written(work / "data")


def measured(
    server: Server, url: str, script: Path, connections: int, seconds: float, speed: Speed
) -> Run:
    pid = server.process.pid
    before = cpu_seconds(pid)
    result = wrk(url, script, connections, seconds, speed.pinning.load)
    return Run(result, cpu_seconds(pid) - before)


def start(
    name: str, work: Path, models_dir: Path, prefix: Sequence[str] = ()
) -> AbstractContextManager[Server]:
    """``steward`` or one of BASELINES, started under ``prefix`` (e.g. taskset's), ready."""
    if name == "steward":
        return start_steward(work, models_dir, prefix)
    port = free_port()
    argv: list[str | Path] = [
        *prefix, UVICORN, "--factory", BASELINES[name], "--app-dir", BENCH,
        "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    env = os.environ | {"NAIVE_MODELS_DIR": str(models_dir)}
    return serving(argv, port=port, env=env, log=work / f"{name}.log", ready="/docs")


def start_steward(
    work: Path, models_dir: Path, prefix: Sequence[str] = ()
) -> AbstractContextManager[Server]:
    port = free_port()
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(work / "data"),
        "STEWARD_LOG_LEVEL": "warning",
    }
    argv: list[str | Path] = [*prefix, STEWARD, "serve", "--port", str(port)]
    return serving(argv, port=port, env=env, log=work / "steward.log", ready="/readyz")


def drive_feedback(
    url: str, models_dir: Path, work: Path, seconds: float, pinned: Pinning
) -> Result:
    """Label fresh iris predictions, one id per request (ids logged first, more than needed)."""
    row = json.loads(request_body(models_dir, "iris", 1))["instances"][0]
    ids: list[str] = []
    for _ in range(400):
        response = post_json(f"{url}/predict/iris", {"instances": [row] * BATCH_ROWS})
        ids.extend(p["id"] for p in response["predictions"])
    ids_file = work / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    script = lua_feedback(ids_file, "setosa", work)
    return wrk(f"{url}/feedback", script, FEEDBACK_CONNECTIONS, seconds, pinned.load)


def print_speed(
    speed: Speed, models: Sequence[str], connections: Sequence[int], seconds: float
) -> None:
    print(
        f"steward and the baselines, median of {ROUNDS} interleaved rounds of {seconds} s; "
        f"{speed.pinning.described}; ratios: ÷ the {REFERENCE} route"
    )
    header = ("model", "conns", "server", "req/s", "p50 ms", "p99 ms", "err", "cpu µs/req",
              "req/s ratio", "p50 ratio", "p99 ratio")  # fmt: skip
    rows = []
    for model in models:
        cells: list[int | str] = [*connections, "batch"]
        for cell in cells:
            servers = BATCH_SERVERS if cell == "batch" else SERVERS
            if (REFERENCE, model, cell) not in speed.runs:
                continue
            scale = BATCH_ROWS if cell == "batch" else 1
            label = f"{BATCH_CONNECTIONS} ({BATCH_ROWS} rows/req, rows/s)"
            base = median_of(speed.runs[(REFERENCE, model, cell)])
            for name in servers:
                m = median_of(speed.runs[(name, model, cell)])
                rows.append((
                    model, label if cell == "batch" else str(cell), name,
                    f"{m.rate * scale:,.0f}", f"{m.p50_ms:.2f}", f"{m.p99_ms:.2f}",
                    str(m.errors), f"{m.cpu_us:,.0f}", f"{m.rate / base.rate:.2f}",
                    f"{m.p50_ms / base.p50_ms:.2f}", f"{m.p99_ms / base.p99_ms:.2f}",
                ))  # fmt: skip
    print_markdown(header, rows)
    print(
        "steward: steward serve (validation, ids, prediction log, metrics, drift on); numpy: "
        "sync def route, pydantic body -> NumPy rows -> model.predict; async: the same as "
        "async def; dataframe: sync def route, a pandas DataFrame per request (bench/naive.py); "
        "one process each; err sums the rounds; cpu: server utime+stime per request"
    )
    print()
    feedback = speed.feedback
    print(
        f"feedback, {FEEDBACK_CONNECTIONS} connections: "
        f"{statistics.median(r.rate for r in feedback):,.0f} feedbacks/s, "
        f"p50 {statistics.median(r.p50_ms for r in feedback):.2f} ms, "
        f"p99 {statistics.median(r.p99_ms for r in feedback):.2f} ms, "
        f"{sum(r.errors for r in feedback)} errors"
    )
    lost = speed.acknowledged - speed.written
    print(
        f"prediction log: {speed.acknowledged:,} rows acknowledged, {speed.written:,} written "
        f"({'none lost' if lost == 0 else f'{lost:,} MISSING'}); "
        f"deepest backlog {speed.deepest_backlog:,.0f} rows"
    )
    rss = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in speed.peak_rss_mib.items())
    print(f"peak RSS: {rss}")
    start_load, end_load = speed.load_average
    print(f"load average (1 min) {start_load:.2f} at the start, {end_load:.2f} at the end")


@dataclass(frozen=True)
class Median:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int  # the sum over the rounds
    cpu_us: float


def median_of(runs: Sequence[Run]) -> Median:
    return Median(
        rate=statistics.median(r.result.rate for r in runs),
        p50_ms=statistics.median(r.result.p50_ms for r in runs),
        p99_ms=statistics.median(r.result.p99_ms for r in runs),
        errors=sum(r.result.errors for r in runs),
        cpu_us=statistics.median(r.cpu_us_per_request for r in runs),
    )
