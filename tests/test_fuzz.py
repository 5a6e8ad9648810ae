"""Fuzzing: schemathesis against a real `steward serve`, driven by the server's own /openapi.json.

The server serves the three demo models and one model trained by `steward train --csv` (an int,
a float with gaps, a text column with gaps, a boolean), so the schema documents one
``POST /predict/<name>`` per model with that model's exact fields, and an OpenAPI link from its
predictions to /feedback: the stateful phase sends ground truth for real predictions, not only
unknown ids.

Every operation gets positive and negative data (examples, coverage, fuzzing and stateful
phases) from a fixed seed. The budget is MAX_EXAMPLES cases per operation and cycle; schemathesis
then repeats fuzzing cycles until MAX_SECONDS are spent, so the run takes a known time whatever
the machine, and every failure it prints comes with a curl command that reproduces it.

Afterwards the service must still be ready, its prediction log must drain, and every sample on
/metrics must be finite: a fuzzed request may be refused, never break the service for the next.
"""

import json
import math
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families
from server import STEWARD, Server, free_port, serving

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"  # the installed console script
SEED = 8
MAX_EXAMPLES = 50  # test cases per operation in one fuzzing cycle
MAX_SECONDS = 25  # the whole schemathesis run; the test's other steps take ~10 s more
CHECKS = ["not_a_server_error", "status_code_conformance", "response_schema_conformance"]
CSV_MODEL = "churn"


def write_customers_csv(path: Path) -> None:
    """60 customers: visits (int), spend (float, gaps), plan (text, gaps), active (boolean)."""
    rng = random.Random(SEED)
    lines = ["visits,spend,plan,active,churned"]
    for row in range(60):
        visits = rng.randint(0, 40)
        active = rng.random() < 0.5
        spend = "" if row % 7 == 3 else f"{rng.uniform(0, 500):.2f}"
        plan = "" if row % 9 == 2 else rng.choice(["basic", "plus", "pro"])
        churned = "yes" if visits + 10 * active > 25 else "no"
        lines.append(f"{visits},{spend},{plan},{active},{churned}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def server(tmp_path: Path, models_dir: Path) -> Iterator[Server]:
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        # A fuzzed request that wedges the log must not also hold the teardown for 30 s.
        "STEWARD_SHUTDOWN_TIMEOUT_SECONDS": "5",
    }
    csv = tmp_path / "customers.csv"
    write_customers_csv(csv)
    trained = subprocess.run(
        [STEWARD, "train", "--csv", csv, "--target", "churned", "--name", CSV_MODEL],
        env=env,
        capture_output=True,
        text=True,
    )
    assert trained.returncode == 0, trained.stderr
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=tmp_path / "server.log", ready="/readyz") as served:
        yield served


def schemathesis_run(schema: Path, url: str) -> tuple[int | None, str]:
    """``schemathesis run`` of ``schema`` against ``url``: its exit code (None: killed), report."""
    argv: list[str | Path] = [
        SCHEMATHESIS,
        "run",
        schema,
        f"--url={url}",
        f"--checks={','.join(CHECKS)}",
        "--mode=all",
        "--phases=examples,coverage,fuzzing,stateful",
        f"--seed={SEED}",
        f"--max-examples={MAX_EXAMPLES}",
        f"--max-time={MAX_SECONDS}",
        "--continue-on-failure",
        "--workers=1",  # its workers are threads: one generates more cases here, and in order
        "--request-timeout=5",
        "--generation-database=none",  # no replay of earlier runs' failures: same seed, same run
        "--no-color",
    ]
    try:
        run = subprocess.run(
            argv,
            cwd=schema.parent,  # anything schemathesis writes stays in tmp_path
            env=os.environ | {"COLUMNS": "120"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=MAX_SECONDS + 30,  # its own bound is checked between test cases only
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return None, output
    return run.returncode, run.stdout


def non_finite_samples(metrics_text: str) -> list[str]:
    return [
        f"{sample.name}{sample.labels} = {sample.value}"
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if not math.isfinite(sample.value)
    ]


def pending_log_rows(http: httpx2.Client) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "steward_prediction_log_pending_rows":
                return float(sample.value)
    raise AssertionError("no steward_prediction_log_pending_rows on /metrics")


def server_complaints(log: Path, shown: int = 10) -> list[str]:
    """The first warnings and errors the server logged (they name what a failure left behind)."""
    lines = [
        line
        for line in log.read_text(errors="replace").splitlines()
        # JSON lines (STEWARD_LOG_FORMAT=json, the default) or text ones
        if re.search(r'"level":"(WARNING|ERROR|CRITICAL)"| (WARNING|ERROR|CRITICAL) ', line)
    ]
    if not lines:
        return []
    head = f"{len(lines)} warnings and errors in {log}; the first {min(shown, len(lines))}:"
    return ["\n".join([head, *lines[:shown]])]


def health_problems(http: httpx2.Client) -> list[str]:
    """What a fuzzing run left broken: readiness, the prediction log, non-finite metrics."""
    problems = []
    if not wait_until(lambda: pending_log_rows(http) == 0, seconds=10):
        problems.append(f"the prediction log never drained: {pending_log_rows(http)} pending")
    ready = http.get("/readyz")
    if ready.status_code != 200:
        problems.append(f"/readyz answers {ready.status_code} after the run: {ready.text}")
    problems += [f"non-finite sample {s}" for s in non_finite_samples(http.get("/metrics").text)]
    return problems


def test_fuzzing_every_operation_finds_no_failure_and_leaves_the_service_healthy(
    server: Server, tmp_path: Path
) -> None:
    with httpx2.Client(base_url=server.url, timeout=10) as http:
        schema = http.get("/openapi.json").json()
        models = {"iris", "breast-cancer", "diabetes", CSV_MODEL}
        assert {f"/predict/{name}" for name in models} <= set(schema["paths"]), schema["paths"]
        schema_file = tmp_path / "openapi.json"
        links = [schema["paths"][f"/predict/{n}"]["post"]["responses"]["200"] for n in models]
        assert all("feedback" in response.get("links", {}) for response in links)
        schema_file.write_text(json.dumps(schema))

        code, report = schemathesis_run(schema_file, server.url)

        problems = []
        if code != 0:
            ended = "was stopped at its time limit" if code is None else f"exited {code}"
            problems.append(f"schemathesis {ended}:\n{report}")
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace").splitlines()[-20:]
            problems.append(f"the server exited ({server.process.returncode}):\n" + "\n".join(tail))
        else:
            problems += health_problems(http)
    if problems:
        pytest.fail("\n\n".join([*problems, *server_complaints(server.log)]), pytrace=False)
