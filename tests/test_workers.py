"""`steward serve --workers 2`, a real process: one port, two workers, and /metrics adding up
exactly as one process would, whichever worker answers the scrape.

Each worker's counts are in its own files in the metrics dir (counter_<pid>.db): reading them one
by one proves that both workers served. Feedback is sent once every prediction is written
(steward_prediction_log_pending_rows 0): a prediction still in another worker's buffer is the
"replicas" part's concern.
"""

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from helpers import (
    DIABETES_ROW,
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    assert_one_line_error,
    empty_store,
    run_cli,
    stored_rows,
    wait_until,
)
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from promql import docs_expression
from server import STEWARD, Server, free_port, serving
from stack import instant_query as query
from stack import scraped

from app.artifacts import METADATA
from app.cli.metrics_folder import LOCK_FILE
from app.cli.workers import restart_delay

PREDICT = "/predict/{model}"
CONNECTIONS = 8  # clients at once, each on its own connection: the kernel spreads them
SCRAPES = 6


def env_for(tmp_path: Path, models_dir: Path, **settings: str) -> dict[str, str]:
    return os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        "STEWARD_WORKERS": "2",
        "STEWARD_METRICS_DIR": str(tmp_path / "metrics"),
        **{f"STEWARD_{name.upper()}": value for name, value in settings.items()},
    }


@contextmanager
def two_workers(env: dict[str, str], log: Path, *options: str) -> Iterator[Server]:
    port = free_port()
    with serving([STEWARD, "serve", "--port", str(port), *options], port=port, env=env, log=log,
                 ready="/readyz", seconds=120) as server:  # fmt: skip
        # /readyz answered from one worker: wait for the other's models too (each worker's
        # steward_model_info file is written when it has loaded them, its store open).
        metrics_dir = Path(env["STEWARD_METRICS_DIR"])
        assert wait_until(lambda: len(list(metrics_dir.glob("gauge_livemax_*.db"))) == 2, 120)
        yield server


def scrape(url: str) -> "Samples":
    """Every sample of one scrape, on a new connection (any worker may answer it)."""
    text = httpx2.get(url + "/metrics", timeout=30).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[key(name, **labels)]


def predictions_by_worker(metrics_dir: Path) -> dict[int, float]:
    """Rows each worker counted in steward_predictions_total, read from its own file."""
    counted = {}
    for path in metrics_dir.glob("counter_*.db"):
        families = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        counted[int(path.stem.split("_")[1])] = sum(
            s.value for f in families for s in f.samples if s.name == "steward_predictions_total"
        )
    return counted


def worker_pids(server: Server) -> set[int]:
    """The server's worker processes (its children, but multiprocessing's resource tracker)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children if b"spawn_main" in cmdline(int(child))}


def cmdline(pid: int) -> bytes:
    """The command line of ``pid`` (empty once it has exited, or while it is being reaped)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def breast_cancer_row(models_dir: Path) -> dict[str, float]:
    metadata = json.loads((models_dir / "breast-cancer" / "1" / METADATA).read_text())
    return {f["name"]: (f["min"] + f["max"]) / 2 for f in metadata["features"]}


class Clients:
    """Predictions sent from CONNECTIONS threads at once, each on its own connection, until both
    workers served some; what was sent and received is counted exactly."""

    def __init__(self, url: str, bodies: dict[str, dict[str, Any]]) -> None:
        self.url = url
        self.bodies = bodies
        self.requests: dict[str, int] = dict.fromkeys(bodies, 0)
        self.rows: dict[str, int] = dict.fromkeys(bodies, 0)
        self.ids: dict[str, list[tuple[str, str]]] = {model: [] for model in bodies}
        self._lock = threading.Lock()

    def round(self, per_connection: int = 3) -> None:
        threads = [threading.Thread(target=self._client, args=(per_connection,))
                   for _ in range(CONNECTIONS)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    def until_both_served(self, metrics_dir: Path) -> dict[int, float]:
        for _ in range(20):  # bounded: the kernel hands new connections to either worker
            self.round()
            counted = predictions_by_worker(metrics_dir)
            if len([rows for rows in counted.values() if rows > 0]) >= 2:
                return counted
        raise AssertionError(f"one worker served everything: {counted}")

    def _client(self, requests: int) -> None:
        with httpx2.Client(base_url=self.url, timeout=30) as http:
            for _ in range(requests):
                for model, body in self.bodies.items():
                    response = http.post(f"/predict/{model}", json=body)
                    assert response.status_code == 200, response.text
                    served = [(p["id"], p["prediction"]) for p in response.json()["predictions"]]
                    with self._lock:
                        self.requests[model] += 1
                        self.rows[model] += len(served)
                        self.ids[model] += served


def promote_iris_2(capsys: pytest.CaptureFixture[str], models_dir: Path) -> None:
    """Iris version 2, a copy of version 1, made production by `steward promote`."""
    shutil.copytree(models_dir / "iris" / "1", models_dir / "iris" / "2")
    metadata = json.loads((models_dir / "iris" / "2" / METADATA).read_text())
    (models_dir / "iris" / "2" / METADATA).write_text(json.dumps(metadata | {"version": 2}))
    code, _, err = run_cli(capsys, "--models-dir", str(models_dir), "promote", "iris", "2")
    assert code == 0, err


def test_two_workers_add_up_exactly_as_one_process(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = env_for(tmp_path, models_dir, reload_interval_seconds="0.3")
    (tmp_path / "prometheus").mkdir()
    with scraped(tmp_path / "prometheus", env) as (steward, prometheus):
        bodies = {
            "iris": {"instances": [IRIS_SETOSA, IRIS_VIRGINICA]},
            "breast-cancer": {"instances": [breast_cancer_row(models_dir)]},
            "diabetes": {"instances": [DIABETES_ROW] * 3},
        }
        clients = Clients(steward.url, bodies)
        by_worker = clients.until_both_served(tmp_path / "metrics")
        assert sum(by_worker.values()) == sum(clients.rows.values())
        assert wait_until(
            lambda: value(scrape(steward.url), "steward_prediction_log_pending_rows") == 0
        )

        # Feedback, through new connections: 6 correct, 4 incorrect, 3 duplicate, 2 invalid
        # for iris; 5 labelled for diabetes.
        setosa = [i for i, predicted in clients.ids["iris"] if predicted == "setosa"]
        sent: list[tuple[str, str | float, int]] = [(i, "setosa", 200) for i in setosa[:6]]
        sent += [(i, "versicolor", 200) for i in setosa[6:10]]
        sent += [(i, "setosa", 200) for i in setosa[:3]]  # duplicates
        sent += [(i, "tulip", 422) for i in setosa[10:12]]  # not an iris class
        sent += [(i, 150.0, 200) for i, _ in clients.ids["diabetes"][:5]]
        for prediction_id, truth, status in sent:
            body = {"prediction_id": prediction_id, "ground_truth": truth}
            response = httpx2.post(steward.url + "/feedback", json=body, timeout=30)
            assert response.status_code == status, response.text

        iris = {"model": "iris", "version": "1"}
        for _ in range(SCRAPES):  # each on a new connection: whichever worker answers
            samples = scrape(steward.url)
            for model, rows in clients.rows.items():
                labels = {"model": model, "version": "1"}
                assert value(samples, "steward_predictions_total", **labels) == rows
            requests = sum(clients.requests.values())
            route = {"method": "POST", "route": PREDICT}
            assert value(samples, "steward_http_requests_total", **route, status="200") == requests
            assert value(samples, "steward_http_request_duration_seconds_count", **route) == (
                requests
            )
            outcomes = {"correct": 6, "incorrect": 4, "duplicate": 3, "invalid": 2, "conflict": 0}
            for outcome, count in outcomes.items():
                assert value(samples, "steward_feedback_total", **iris, outcome=outcome) == count
            diabetes = {"model": "diabetes", "version": "1"}
            assert value(samples, "steward_feedback_total", **diabetes, outcome="labelled") == 5
            assert value(samples, "steward_feedback_absolute_error_count", **diabetes) == 5
            confusion = {**iris, "predicted": "setosa"}
            assert value(samples, "steward_feedback_confusion_total", **confusion,
                         actual="setosa", correct="true") == 6  # fmt: skip
            assert value(samples, "steward_feedback_confusion_total", **confusion,
                         actual="versicolor", correct="false") == 4  # fmt: skip
            # livemax: one series per version and alias, 1 however many workers serve it.
            info = {(dict(k[1])["model"], dict(k[1])["alias"]): v for k, v in samples.items()
                    if k[0] == "steward_model_info"}  # fmt: skip
            assert info == {(m, "production"): 1.0 for m in ("iris", "breast-cancer", "diabetes")}
            assert value(samples, "steward_prediction_log_pending_rows") == 0

        # Prometheus, scraping whichever worker answers, sees the same totals.
        def prometheus_total() -> float | None:
            result = query(prometheus.url, 'sum(steward_predictions_total{model="iris"})')
            return float(result[0]["value"][1]) if result else None

        assert wait_until(lambda: prometheus_total() == clients.rows["iris"], seconds=30)

        # An alias moves: each worker's watcher swaps; the old series reads 0 (it cannot go
        # under workers), and the documented PromQL keeps only the series that are 1.
        promote_iris_2(capsys, models_dir)
        old = key("steward_model_info", model="iris", version="1", alias="production")
        new = key("steward_model_info", model="iris", version="2", alias="production")
        assert wait_until(lambda: scrape(steward.url).get(old) == 0, seconds=30)
        for _ in range(SCRAPES):
            samples = scrape(steward.url)
            assert (samples[old], samples[new]) == (0.0, 1.0)

        served = docs_expression("steward_model_info ==")

        def production_in_prometheus() -> list[str]:
            return sorted(
                r["metric"]["version"]
                for r in query(prometheus.url, served)
                if r["metric"]["model"] == "iris" and r["metric"]["alias"] == "production"
            )

        assert wait_until(lambda: production_in_prometheus() == ["2"], seconds=30)


def test_a_killed_worker_is_replaced_and_its_counts_stay(tmp_path: Path, models_dir: Path) -> None:
    env = env_for(tmp_path, models_dir, drift_interval_seconds="0.3")
    metrics_dir = tmp_path / "metrics"
    with two_workers(env, tmp_path / "steward.log") as server:
        iris = {"model": "iris", "version": "1"}
        clients = Clients(server.url, {"iris": {"instances": [IRIS_SETOSA, IRIS_VIRGINICA]}})
        by_worker = clients.until_both_served(metrics_dir)
        total = clients.rows["iris"]
        window = key("steward_drift_window_rows", **iris)
        # livesum: each worker's drift window holds the rows it served.
        assert wait_until(lambda: scrape(server.url).get(window) == total, seconds=30)

        workers = worker_pids(server)
        assert set(by_worker) == workers
        killed, kept = sorted(workers, key=lambda pid: by_worker[pid])
        os.kill(killed, signal.SIGKILL)
        started: set[int] = set()

        def replaced() -> bool:  # one reading of the children (a dying one may still show)
            started.clear()
            started.update(worker_pids(server) - {kept, killed})
            return len(started) == 1

        assert wait_until(replaced, seconds=60)
        (replacement,) = started
        # Marked dead: its live gauges' files are gone; its counter file stays.
        assert wait_until(lambda: not list(metrics_dir.glob(f"gauge_live*_{killed}.db")))
        assert (metrics_dir / f"counter_{killed}.db").exists()
        assert wait_until(lambda: (metrics_dir / f"counter_{replacement}.db").exists(), 60)
        server.wait_ready("/readyz", 60)

        # Counters keep every row the dead worker counted; its drift window is gone with it.
        expected_window = by_worker[kept]
        assert wait_until(lambda: scrape(server.url).get(window) == expected_window, seconds=30)
        for _ in range(SCRAPES):
            samples = scrape(server.url)
            assert value(samples, "steward_predictions_total", **iris) == total
            assert value(samples, "steward_model_info", **iris, alias="production") == 1.0

        clients.round(per_connection=1)  # the service keeps answering
        after = value(scrape(server.url), "steward_predictions_total", **iris)
        assert after == clients.rows["iris"] > total
        assert server.stop() == 0


def test_sigterm_drains_every_worker_and_exits_0(tmp_path: Path, models_dir: Path) -> None:
    env = env_for(tmp_path, models_dir)
    with two_workers(env, tmp_path / "steward.log") as server:
        port = int(server.url.rsplit(":", 1)[1])
        received: set[str] = set()
        stop = threading.Event()

        def client() -> None:
            with httpx2.Client(base_url=server.url, timeout=30) as http:
                for _ in range(2000):  # bounded: SIGTERM comes long before
                    if stop.is_set():
                        return
                    try:
                        response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
                    except httpx2.HTTPError:
                        return
                    if response.status_code != 200:
                        return
                    received.update(p["id"] for p in response.json()["predictions"])

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        assert wait_until(lambda: len(received) >= 100, seconds=60)
        code = server.stop(timeout=120)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert code == 0, server.log.read_text()
        stored = {row["id"] for row in stored_rows(tmp_path / "data")}
        assert received <= stored
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert not list((tmp_path / "metrics").glob("gauge_live*.db"))  # every worker marked dead


def test_sigterm_exits_1_naming_the_worker_that_left_rows_unwritten(
    tmp_path: Path, models_dir: Path
) -> None:
    env = env_for(tmp_path, models_dir, shutdown_timeout_seconds="1")
    with two_workers(env, tmp_path / "steward.log") as server:
        # Another process holds the write lock: every worker's writer waits, and gives up.
        lock = sqlite3.connect(tmp_path / "data" / "steward.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            with httpx2.Client(base_url=server.url, timeout=10) as http:
                for _ in range(3):  # one connection: one worker holds all three
                    response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
                    assert response.status_code == 200, response.text
            code = server.stop(timeout=120)
        finally:
            lock.rollback()
            lock.close()
    output = server.log.read_text()
    assert code == 1, output
    assert "shut down with 3 acknowledged predictions unwritten" in output  # the worker's line
    (line,) = [line for line in output.splitlines() if line.startswith("steward: error:")]
    assert re.fullmatch(
        r"steward: error: 1 of 2 workers did not drain: worker \[[0-9]+\] exited with status 1; "
        r"acknowledged predictions may be unwritten \(its error is in the log above\)",
        line,
    ), line


def test_a_worker_that_fails_its_start_up_stops_the_server_with_status_3(
    tmp_path: Path, models_dir: Path
) -> None:
    """The models folder goes once the parent's pre-flight has passed and the workers are
    starting (a worker imports for a second or more before it builds its app, which then finds no
    folder): a first worker that cannot start stops the server with status 3, rather than start
    it again and again."""
    env = env_for(tmp_path, models_dir)
    port = free_port()
    log = tmp_path / "steward.log"
    server = Server([STEWARD, "serve", "--port", str(port)], port=port, env=env, log=log)
    try:
        assert wait_until(lambda: "] started" in log.read_text(), seconds=60, interval=0.005)
        models_dir.rename(tmp_path / "moved")
        code = server.process.wait(timeout=120)
    finally:
        server.stop()
    output = log.read_text()
    assert code == 3, output
    assert output.count("] failed to start: stopping the server") == 1, output
    assert output.count("] started") == 2, output  # no worker started again
    assert "Traceback" not in output.split("failed to start")[-1]


def test_a_previous_runs_metric_files_are_wiped(tmp_path: Path, models_dir: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = MmapedDict(str(metrics_dir / "counter_99999.db"))  # type: ignore[no-untyped-call]
    key = mmap_key("steward_predictions", "steward_predictions_total", ["model", "version"],
                   ["iris", "1"], "Predicted rows by model and version.")  # fmt: skip
    stale.write_value(key, 1000.0, 0.0)  # type: ignore[no-untyped-call]
    stale.close()  # type: ignore[no-untyped-call]
    # The workers get the settings the parent resolved, its options included: the environment
    # names a models folder that is not there, --models-dir the real one.
    env = env_for(tmp_path, tmp_path / "no-such-folder")
    options = ("--models-dir", str(models_dir))
    with two_workers(env, tmp_path / "steward.log", *options) as server:
        assert not (metrics_dir / "counter_99999.db").exists()
        iris = {"model": "iris", "version": "1"}
        assert value(scrape(server.url), "steward_predictions_total", **iris) == 0
        response = httpx2.post(server.url + "/predict/iris", json={"instances": [IRIS_SETOSA]})
        assert response.status_code == 200
        assert value(scrape(server.url), "steward_predictions_total", **iris) == 1
        assert server.stop() == 0


@pytest.mark.timeout(300)  # three servers, one after the other
def test_a_second_server_on_the_same_metrics_dir_is_refused_and_the_first_keeps_its_files(
    tmp_path: Path, models_dir: Path
) -> None:
    env = env_for(tmp_path, models_dir)
    metrics_dir = tmp_path / "metrics"
    with two_workers(env, tmp_path / "steward.log") as server:
        response = httpx2.post(server.url + "/predict/iris", json={"instances": [IRIS_SETOSA]})
        assert response.status_code == 200, response.text
        files = {path.name for path in metrics_dir.glob("*.db")}
        argv = [str(STEWARD), "serve", "--port", str(free_port())]
        run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert (run.returncode, run.stdout) == (1, ""), run.stderr
        assert_one_line_error(
            run.stderr,
            f"steward: error: STEWARD_METRICS_DIR: {metrics_dir} is in use by another steward "
            f"server (pid {server.process.pid}): give each server a folder of its own",
        )
        # None wiped (the other worker may have made one meanwhile, at its first request).
        assert files <= {path.name for path in metrics_dir.glob("*.db")}
        iris = {"model": "iris", "version": "1"}
        for _ in range(SCRAPES):
            samples = scrape(server.url)
            assert value(samples, "steward_predictions_total", **iris) == 1
            assert value(samples, "steward_model_info", **iris, alias="production") == 1.0
        assert server.stop() == 0
    assert (metrics_dir / LOCK_FILE).read_text() == f"{server.process.pid}\n"
    # Released at exit: the next server takes the folder.
    with two_workers(env, tmp_path / "again.log") as again:
        assert (metrics_dir / LOCK_FILE).read_text() == f"{again.process.pid}\n"
        assert again.stop() == 0


@pytest.mark.timeout(300)  # restarts, each after a longer wait
def test_a_replacement_that_fails_its_start_up_is_retried_with_backoff_while_the_other_serves(
    tmp_path: Path, models_dir: Path
) -> None:
    """Only a first worker's failed start-up stops the server; a replacement's is retried, each
    wait twice the last, and the other worker serves meanwhile."""
    env = env_for(tmp_path, models_dir)
    metrics_dir = tmp_path / "metrics"
    with two_workers(env, tmp_path / "steward.log") as server:
        killed, kept = sorted(worker_pids(server))
        moved = models_dir.rename(tmp_path / "moved")  # a replacement's create_app fails
        os.kill(killed, signal.SIGKILL)
        failed = re.compile(r"worker \[([0-9]+)\] exited with status 3: starting another in 2 s")
        assert wait_until(lambda: failed.search(server.log.read_text()) is not None, 120)
        assert server.process.poll() is None, server.log.read_text()
        # The other worker answers (liveness: its registry has just lost its folder too).
        assert httpx2.get(server.url + "/healthz", timeout=30).status_code == 200
        moved.rename(models_dir)
        assert wait_until(lambda: len(list(metrics_dir.glob("gauge_livemax_*.db"))) == 2, 120)
        assert kept in worker_pids(server)
        assert server.stop(timeout=120) == 0
    output = server.log.read_text()
    restarts = re.findall(r"worker \[[0-9]+\] (.*): starting another in ([0-9]+) s", output)
    assert restarts[0] == ("was killed by SIGKILL", "1")
    assert restarts[1:] == [("exited with status 3", str(2**n)) for n in range(1, len(restarts))]
    assert "stopping the server" not in output


def test_the_restart_wait_doubles_to_30_s_and_starts_over_after_a_minute_of_life() -> None:
    waits = [restart_delay(None, 0.5)]
    for _ in range(6):
        waits.append(restart_delay(waits[-1], 0.5))
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(30, 59.9) == 30
    assert restart_delay(30, 60) == 1


def test_ctrl_c_while_the_workers_start_exits_0_without_a_traceback(
    tmp_path: Path, models_dir: Path
) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C) as the workers are spawned."""
    port = free_port()
    log = tmp_path / "steward.log"
    server = Server([STEWARD, "serve", "--port", str(port)], port=port,
                    env=env_for(tmp_path, models_dir), log=log)  # fmt: skip
    try:
        assert wait_until(lambda: log.read_text().count("] started") == 2, 120, interval=0.02)
        os.killpg(server.process.pid, signal.SIGINT)
        code = server.process.wait(timeout=120)
    finally:
        server.stop()
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output
    assert "KeyboardInterrupt" not in output
    assert "did not drain" not in output
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_workers_whose_parent_was_killed_drain_and_free_the_port(
    tmp_path: Path, models_dir: Path
) -> None:
    env = env_for(tmp_path, models_dir)
    with two_workers(env, tmp_path / "steward.log") as server:
        port = int(server.url.rsplit(":", 1)[1])
        workers = worker_pids(server)
        received: set[str] = set()
        with httpx2.Client(base_url=server.url, timeout=30) as http:
            for _ in range(5):
                response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
                assert response.status_code == 200, response.text
                received.update(p["id"] for p in response.json()["predictions"])
        os.kill(server.process.pid, signal.SIGKILL)
        assert wait_until(lambda: not any(running(pid) for pid in workers), 120)
        with socket.create_server(("127.0.0.1", port)):  # nobody listens there any more
            pass
        # They drained as on SIGTERM: every answered prediction is stored.
        assert {row["id"] for row in stored_rows(tmp_path / "data")} == received
    output = server.log.read_text()
    assert "Traceback" not in output


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (an unreaped orphan is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# The last: a full-width 1, a digit to str.isdigit but not ASCII.
@pytest.mark.parametrize("given", ["0", "-1", "abc", "65", "2.5", "\uff11"])
def test_a_bad_worker_count_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    code, out, err = run_cli(capsys, "--models-dir", str(tmp_path), "serve", f"--workers={given}")
    assert (code, out) == (2, "")
    assert_one_line_error(err, "argument --workers: a worker count is a whole number from 1 to 64")


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_steward_metrics_dir_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """Empty would be the current folder, whose metric files the server deletes at start."""
    monkeypatch.setenv("STEWARD_METRICS_DIR", given)
    code, out, err = run_cli(capsys, "--models-dir", str(tmp_path), "serve", "--workers", "2")
    assert (code, out) == (1, "")
    assert_one_line_error(
        err, "invalid settings: STEWARD_METRICS_DIR: empty: unset it for a temporary folder"
    )


@pytest.mark.parametrize("given", ["0", "-3", "many", "65"])
def test_a_bad_steward_workers_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    monkeypatch.setenv("STEWARD_WORKERS", given)
    code, out, err = run_cli(capsys, "--models-dir", str(tmp_path), "serve")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "invalid settings: STEWARD_WORKERS: input should be")


@pytest.mark.parametrize("case", ["in-a-file", "a-file", "another-db"])
def test_an_unusable_metrics_dir_is_refused_in_one_line(
    tmp_path: Path, models_dir: Path, case: str
) -> None:
    (tmp_path / "file.txt").write_text("a file where a folder should be\n")
    metrics_dir = tmp_path / "file.txt" / "metrics"
    message = f"cannot use {metrics_dir} for the workers' metrics: Not a directory"
    if case == "a-file":
        metrics_dir = tmp_path / "file.txt"
        message = f"{metrics_dir} is not a folder"
    if case == "another-db":  # a store's file: not deleted, and not read as metrics either
        metrics_dir = tmp_path / "data"
        empty_store(metrics_dir)
        message = f"{metrics_dir} holds files that are not metric files (steward.db): give"
    env = env_for(tmp_path, models_dir, metrics_dir=str(metrics_dir))
    argv = [str(STEWARD), "serve", "--port", str(free_port())]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout) == (1, ""), run.stderr
    assert_one_line_error(run.stderr, f"steward: error: STEWARD_METRICS_DIR: {message}")
    if case == "another-db":
        assert (metrics_dir / "steward.db").stat().st_size > 0
