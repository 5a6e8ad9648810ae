"""One worker against two (``bench/run.py --workers-only``, and the last part of ``make bench``):
``steward serve --workers N`` driven by wrk on /predict/iris at CONNECTIONS connections, N = 1
then 2, interleaved over ROUNDS rounds, the median of each; and the ratio of their req/s.

Pinning, on a 2-core machine where wrk must share the cores: the server and wrk run on the same
CPU set in both cells (taskset on every CPU this process may use; nothing pinned apart). One
worker is one process and can use one core, so wrk has the other to itself; two workers take
both, and wrk's share comes out of theirs. That is the deployment being measured (the load
balancer or client is elsewhere in production, here it is not), and it makes the ratio a
conservative one. Pinning the server to one core and wrk to the other, as the main table does,
would cap two workers at one core: no longer a comparison.
"""

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from load import IRIS, Result, lua_post, wrk
from server import STEWARD, free_port, serving

WORKERS = (1, 2)
CONNECTIONS = 64
ROUNDS = 2
WARM_UP_SECONDS = 1
# After the warm-up, before the run: the warm-up's last requests finish, and do not count
# against the run's STEWARD_MAX_CONCURRENCY (64, the run's own connections).
PAUSE_SECONDS = 1.0
START_SECONDS = 120


@dataclass
class WorkersCost:
    runs: dict[int, list[Result]] = field(default_factory=dict)
    cpus: str = ""  # the CPU set of the server and of wrk, taskset's list

    def median(self, workers: int) -> Result:
        runs = self.runs[workers]
        return Result(
            requests=round(statistics.median(r.requests for r in runs)),
            seconds=statistics.median(r.seconds for r in runs),
            p50_ms=statistics.median(r.p50_ms for r in runs),
            p99_ms=statistics.median(r.p99_ms for r in runs),
            errors=sum(r.errors for r in runs),
        )

    @property
    def ratio(self) -> float:
        """Two workers' req/s over one's (medians)."""
        return self.median(2).rate / self.median(1).rate

    @property
    def pinning(self) -> str:
        return f"server and wrk both on cpus {self.cpus} (not pinned apart)"


def workers_cost(work: Path, models_dir: Path, seconds: float, rounds: int = ROUNDS) -> WorkersCost:
    work.mkdir()
    cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    cost = WorkersCost(runs={n: [] for n in WORKERS}, cpus=cpus)
    script = lua_post(json.dumps({"instances": [IRIS]}), work, "workers-iris")
    for round_ in range(rounds):
        for workers in WORKERS:
            run = work / f"{workers}-{round_}"
            env = os.environ | {
                "STEWARD_MODELS_DIR": str(models_dir),
                "STEWARD_DATA_DIR": str(run / "data"),
                "STEWARD_LOG_LEVEL": "warning",
                "STEWARD_WORKERS": str(workers),
                "STEWARD_METRICS_DIR": str(run / "metrics"),
            }
            port = free_port()
            argv: list[str | Path] = ["taskset", "-c", cpus, STEWARD, "serve", "--port", str(port)]
            run.mkdir()
            with serving(argv, port=port, env=env, log=run / "steward.log", ready="/readyz",
                         seconds=START_SECONDS) as server:  # fmt: skip
                if workers > 1:  # /readyz answered from one: wait for every worker's models
                    wait_for_workers(run / "metrics", workers)
                url = f"{server.url}/predict/iris"
                wrk(url, script, CONNECTIONS, WARM_UP_SECONDS, cpus)
                time.sleep(PAUSE_SECONDS)
                cost.runs[workers].append(wrk(url, script, CONNECTIONS, seconds, cpus))
    return cost


def wait_for_workers(metrics_dir: Path, workers: int) -> None:
    """Until each worker has loaded its models: its files for steward_model_info (livemax) are
    written by then."""
    deadline = time.monotonic() + START_SECONDS
    while len(list(metrics_dir.glob("gauge_livemax_*.db"))) < workers:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{workers} workers did not start in {START_SECONDS} s")
        time.sleep(0.1)
