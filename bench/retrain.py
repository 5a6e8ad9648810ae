"""What a retrain job costs the predictions served beside it (``bench/run.py --retrain-only``,
and the last part of ``make bench``).

A real ``steward serve`` on its own demo registry, admin API on. iris first gets LABELLED rows
of feedback the way clients send it: 64-row /predict requests, their ids labelled through
/feedback (the recent tenth after a pause longer than STEWARD_RETRAIN_HOLDOUT_SECONDS, so that
the gate has recent traffic to judge on). Then wrk drives /predict/iris at fixed connections
for fixed seconds, alternately with no job and while retrain jobs run one after the other
(POST /admin/models/iris/retrain, GET /admin/jobs/{id} until it ends, again while the window
lasts), over ROUNDS interleaved rounds. With two cores or more the server runs on one and wrk
on another (taskset); the retraining process inherits the server's core, so the two share it.
"""

import json
import os
import random
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cpu import pinning
from load import Result, get, lua_post, post_json, wrk
from server import STEWARD, free_port, serving

LABELLED = 20_000  # rows of feedback the retraining learns from
RECENT_SHARE = 0.1  # of them labelled last: the gate's recent traffic
HOLDOUT_SECONDS = 2.0  # STEWARD_RETRAIN_HOLDOUT_SECONDS of the server
CONNECTIONS = (1, 64)
ROUNDS = 2
MODES = ("idle", "retraining")
ROWS_PER_REQUEST = 64
FEEDBACK_ITEMS = 1000  # STEWARD_MAX_FEEDBACK_ITEMS' default
JOB_SECONDS = 300  # the longest one job may take before the bench gives up
POLL_SECONDS = 0.1
SEED = 11


@dataclass(frozen=True)
class JobRun:
    """One retrain job: its duration as the server reports it (started -> ended), and when it
    ran as seen here (time.monotonic), to measure how much of a load window it covered."""

    seconds: float
    began: float
    ended: float
    status: str
    data: dict[str, Any]


@dataclass
class RetrainCost:
    """The wrk runs per (mode, connections), the jobs, and how the run was set up."""

    runs: dict[tuple[str, int], list[Result]] = field(default_factory=dict)
    alone: JobRun | None = None  # one job with no load
    jobs: list[JobRun] = field(default_factory=list)  # the jobs of the retraining windows
    window_seconds: float = 0.0  # the retraining windows, in all
    covered_seconds: float = 0.0  # of which a job was running
    pinning: str = ""
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute, at the start and at the end


def retrain_cost(work: Path, seconds: float) -> RetrainCost:
    """Everything under ``work``: a registry of its own (the shadow part leaves iris with a
    candidate and a traffic policy), the store, the wrk script, the server's log."""
    work.mkdir()
    began_load = os.getloadavg()[0]
    models_dir = work / "models"
    subprocess.run([STEWARD, "--models-dir", models_dir, "train", "demo"], check=True,
                   capture_output=True)  # fmt: skip
    token = secrets.token_urlsafe(24)
    admin = {"Authorization": f"Bearer {token}"}
    cost = RetrainCost()
    pinned = pinning()
    prefix: list[str | Path] = [*pinned.prefix()]
    load_cpus = pinned.load
    cost.pinning = (
        "not pinned (one core)"
        if pinned.server is None
        else f"server on core {pinned.server} (its retraining processes inherit it), "
        f"wrk on core {pinned.load}"
    )
    port = free_port()
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(work / "data"),
        "STEWARD_LOG_LEVEL": "warning",
        "STEWARD_ADMIN_TOKEN": token,
        "STEWARD_RETRAIN_HOLDOUT_SECONDS": str(HOLDOUT_SECONDS),
    }
    argv = [*prefix, STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=work / "steward.log", ready="/readyz") as steward:
        features = json.loads((models_dir / "iris" / "1" / "metadata.json").read_text())
        label_feedback(steward.url, [f["name"] for f in features["features"]], features)
        script = lua_post(_body(features), work, "retrain-iris")
        url = f"{steward.url}/predict/iris"
        wrk(url, script, 8, 2, load_cpus)  # warm-up
        cost.alone = Retraining(steward.url, admin).one()
        for _ in range(ROUNDS):
            for mode in MODES:
                for c in CONNECTIONS:
                    jobs = Retraining(steward.url, admin) if mode == "retraining" else None
                    if jobs is not None:
                        jobs.start()
                    began = time.monotonic()
                    result = wrk(url, script, c, seconds, load_cpus)
                    ended = time.monotonic()
                    cost.runs.setdefault((mode, c), []).append(result)
                    if jobs is not None:
                        ran = jobs.stop()
                        cost.jobs += ran
                        cost.window_seconds += ended - began
                        cost.covered_seconds += sum(
                            max(0.0, min(j.ended, ended) - max(j.began, began)) for j in ran
                        )
        steward.stop(timeout=120)
    cost.load_average = (began_load, os.getloadavg()[0])
    return cost


def label_feedback(url: str, names: list[str], metadata: dict[str, Any]) -> None:
    """LABELLED iris predictions with their true species, through /predict and /feedback: rows
    drawn uniformly in the training range of each feature, labelled by the classic rule on
    petal length and width (a rule v1 mostly agrees with)."""
    rng = random.Random(SEED)
    ranges = {f["name"]: (f["min"], f["max"]) for f in metadata["features"]}
    recent = round(LABELLED * RECENT_SHARE)
    for count in (LABELLED - recent, recent):
        if count == recent:  # the training rows now lie before the gate's recent window
            time.sleep(HOLDOUT_SECONDS + 1)
        rows = [{n: round(rng.uniform(*ranges[n]), 2) for n in names} for _ in range(count)]
        items = []
        for start in range(0, count, ROWS_PER_REQUEST):
            batch = rows[start : start + ROWS_PER_REQUEST]
            answer = post_json(f"{url}/predict/iris", {"instances": batch})
            items += [
                {"prediction_id": p["id"], "ground_truth": _species(row)}
                for p, row in zip(answer["predictions"], batch, strict=True)
            ]
        for start in range(0, len(items), FEEDBACK_ITEMS):
            post_json(f"{url}/feedback", {"items": items[start : start + FEEDBACK_ITEMS]})


def _species(row: dict[str, float]) -> str:
    if row["petal_length_cm"] < 2.45:
        return "setosa"
    return "versicolor" if row["petal_width_cm"] < 1.75 else "virginica"


def _body(metadata: dict[str, Any]) -> str:
    """One row in the middle of the training range, as the rest of the bench sends."""
    row = {f["name"]: round((f["min"] + f["max"]) / 2, 4) for f in metadata["features"]}
    return json.dumps({"instances": [row]})


class Retraining:
    """Retrain jobs for iris (``then: keep``) one after another in a thread, until stopped;
    a job that fails stops the bench."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.jobs: list[JobRun] = []
        self._stopped = threading.Event()
        self._first = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Once the first job has been accepted."""
        self._thread.start()
        if not self._first.wait(30):
            raise RuntimeError("the first retrain job was not accepted within 30 s")

    def stop(self) -> list[JobRun]:
        """After the running job ended (at most JOB_SECONDS): the jobs that ran."""
        self._stopped.set()
        self._thread.join(JOB_SECONDS + 10)
        if self._error is not None:
            raise self._error
        if self._thread.is_alive():
            raise RuntimeError(f"a retrain job did not end within {JOB_SECONDS} s")
        return self.jobs

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                self.jobs.append(self.one())
        except BaseException as exc:  # handed to stop()
            self._error = exc
            self._first.set()

    def one(self) -> JobRun:
        began = time.monotonic()
        started = post_json(f"{self.url}/admin/models/iris/retrain", {"then": "keep"}, self.headers)
        self._first.set()
        deadline = began + JOB_SECONDS
        while True:
            view = json.loads(get(f"{self.url}/admin/jobs/{started['job']}", self.headers))
            if view["status"] in ("passed", "refused", "failed"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"retrain job {started['job']} still {view['status']}")
            time.sleep(POLL_SECONDS)
        ended = time.monotonic()
        if view["status"] == "failed":
            raise RuntimeError(f"retrain job failed: {view['error']}")
        took = datetime.fromisoformat(view["ended"]) - datetime.fromisoformat(view["started"])
        return JobRun(took.total_seconds(), began, ended, view["status"], view["result"]["data"])
