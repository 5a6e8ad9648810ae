"""End to end: the installed `steward` command trains and serves; real HTTP; SIGTERM drains."""

import os
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from helpers import DIABETES_ROW, IRIS_SETOSA, stored_rows, wait_until
from prometheus_client.parser import text_string_to_metric_families
from server import STEWARD, Server, free_port, serving

from app.training import train_demo


@dataclass
class Steward:
    """A `steward serve` process, and the folder of its prediction log."""

    server: Server
    data_dir: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def log(self) -> Path:
        return self.server.log

    def stop(self) -> None:
        """SIGTERM, then check the shutdown was graceful: every acknowledged row written."""
        code = self.server.stop(timeout=30)
        output = self.log.read_text()
        assert code == 0, output
        assert "Application shutdown complete" in output, output
        assert "unwritten" not in output, output


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Steward]:
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(tmp_path / "models"),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
    }
    trained = subprocess.run(
        [STEWARD, "train", "demo", "--if-missing"], env=env, capture_output=True, text=True
    )
    assert trained.returncode == 0, trained.stderr
    assert "iris: version 1 (production)" in trained.stdout
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=tmp_path / "server.log", ready="/readyz") as served:
        yield Steward(served, tmp_path / "data")


def test_predict_feedback_metrics_over_http(server: Steward) -> None:
    with httpx2.Client(base_url=server.url, timeout=10) as http:
        response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
        assert response.status_code == 200
        (prediction,) = response.json()["predictions"]
        assert prediction["prediction"] == "setosa"
        result = http.post(
            "/feedback", json={"prediction_id": prediction["id"], "ground_truth": "setosa"}
        )
        assert result.json()["status"] == "accepted"
        value = http.post("/predict/diabetes", json={"instances": [DIABETES_ROW]})
        assert value.status_code == 200
        assert http.post("/predict/iris", content=b"{").status_code == 400
        assert http.get("/docs").status_code == 200
        metrics = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(http.get("/metrics").text)
            for s in family.samples
        }
    iris = (("model", "iris"), ("version", "1"))
    assert metrics[("steward_predictions_total", iris)] == 1
    assert metrics[("steward_feedback_total", (*iris[:1], ("outcome", "correct"), iris[1]))] == 1
    server.stop()
    assert len(stored_rows(server.data_dir)) == 2


def test_sigterm_under_load_loses_no_acknowledged_prediction(server: Steward) -> None:
    def burst(_: int) -> list[str]:
        ids = []
        with httpx2.Client(base_url=server.url, timeout=10) as http:
            for _ in range(25):
                body = {"instances": [IRIS_SETOSA, IRIS_SETOSA]}
                response = http.post("/predict/iris", json=body)
                assert response.status_code == 200
                ids += [p["id"] for p in response.json()["predictions"]]
        return ids

    with ThreadPoolExecutor(max_workers=8) as pool:
        acknowledged = [i for ids in pool.map(burst, range(8)) for i in ids]
    server.stop()
    stored = {row["id"] for row in stored_rows(server.data_dir)}
    assert len(acknowledged) == 400
    assert stored == set(acknowledged)


def test_readme_curl_session_works_as_written(server: Steward) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    session = readme.split("<!-- curl-session -->\n```sh\n", 1)[1].split("```", 1)[0]
    script = session.replace("http://127.0.0.1:8000", server.url)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert '"prediction":"setosa"' in lines[0]
    assert '"status":"accepted"' in lines[1]
    assert 'steward_predictions_total{model="iris",version="1"} 1.0' in lines
    assert 'steward_feedback_total{model="iris",outcome="correct",version="1"} 1.0' in lines


def test_a_client_that_leaves_mid_body_is_499_not_a_server_error(server: Steward) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(
            b"POST /predict/iris HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500\r\n\r\n" + b'{"instances": ['
        )
    with httpx2.Client(base_url=server.url, timeout=10) as http:

        def counted() -> bool:
            text = http.get("/metrics").text
            return 'route="/predict/{model}",status="499"} 1.0' in text

        assert wait_until(counted, seconds=10), http.get("/metrics").text
        assert 'status="500"' not in http.get("/metrics").text
    server.stop()
    assert "Traceback" not in server.log.read_text()
    assert stored_rows(server.data_dir) == []


def test_a_row_the_store_cannot_hold_wedges_nothing_and_loses_nothing(tmp_path: Path) -> None:
    """An integer beyond 2**63 for an int feature is refused at validation (422): it once was
    acknowledged and wedged the log. A row the database refuses after it was acknowledged (a
    trigger on one value, as a constraint could) is kept in prediction_quarantine. Either way
    never a 5xx, /readyz stays 200, feedback works at once, and every other acknowledged row
    survives SIGTERM."""
    csv = tmp_path / "visits.csv"
    csv.write_text(
        "visits,spend,churned\n"
        + "".join(f"{i % 10},{i * 1.5 + 2},{'yes' if i % 10 < 4 else 'no'}\n" for i in range(60))
    )
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(tmp_path / "models"),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
    }
    argv: list[str | Path] = [STEWARD, "train", "--csv", csv, "--target", "churned"]
    trained = subprocess.run([*argv, "--name", "churn"], env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    port = free_port()
    serve: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    log = tmp_path / "server.log"
    with serving(serve, port=port, env=env, log=log, ready="/readyz") as served:
        server = Steward(served, tmp_path / "data")
        with httpx2.Client(base_url=server.url, timeout=30) as http:

            def ready() -> dict[str, object]:
                response = http.get("/readyz")
                assert response.status_code == 200, response.text
                body: dict[str, object] = response.json()
                return body

            def predict(visits: int) -> httpx2.Response:
                body = {"instances": [{"visits": visits, "spend": 20.5}]}
                return http.post("/predict/churn", json=body)

            with sqlite3.connect(tmp_path / "data" / "steward.db") as conn:
                conn.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON predictions "
                    "WHEN json_extract(NEW.inputs, '$.visits') = 7 "
                    "BEGIN SELECT RAISE(ABORT, 'refused by a constraint'); END"
                )
            acknowledged = []
            for visits in (1, 2, 3):
                response = predict(visits)
                assert response.status_code == 200, response.text
                acknowledged += [p["id"] for p in response.json()["predictions"]]
            ready()
            assert predict(2**70).status_code == 422
            refused = predict(7)
            assert refused.status_code == 200, refused.text
            bad = [p["id"] for p in refused.json()["predictions"]]
            ready()
            for visits in (4, 5, 6):
                response = predict(visits)
                assert response.status_code == 200, response.text
                acknowledged += [p["id"] for p in response.json()["predictions"]]
            truth = {"prediction_id": acknowledged[-1], "ground_truth": "yes"}
            feedback = http.post("/feedback", json=truth)
            assert feedback.status_code == 200, feedback.text
            assert wait_until(lambda: ready()["pending_log_rows"] == 0, seconds=10)
            assert ready()["status"] == "ready"
        server.stop()
    stored = {row["id"] for row in stored_rows(server.data_dir)}
    assert stored == set(acknowledged)
    with sqlite3.connect(server.data_dir / "steward.db") as conn:
        kept = [row[0] for row in conn.execute("SELECT id FROM prediction_quarantine")]
    assert kept == bad  # an acknowledged row the store refused is kept there for an operator
    assert f"prediction {bad[0]} of churn v1 quarantined" in log.read_text()
    assert str(2**70) not in log.read_text()


def test_a_promotion_under_load_fails_no_request_and_each_response_names_its_version(
    tmp_path: Path, models_dir: Path
) -> None:
    """Clients keep posting to a real `steward serve` while `steward promote`, from another
    process, moves iris to v2: no request fails, each client sees v1 then v2 (never back), and
    the prediction log holds every acknowledged row under the version its response named."""
    train_demo(models_dir)  # v2 of each demo; production stays 1
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        "STEWARD_RELOAD_INTERVAL_SECONDS": "0.2",
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    log = tmp_path / "server.log"
    clients = 6
    seen: list[list[tuple[int, list[str]]]] = [[] for _ in range(clients)]
    failures: list[str] = []
    done = threading.Event()

    def load(index: int, url: str) -> None:
        with httpx2.Client(base_url=url, timeout=30) as http:
            for _ in range(20_000):  # bounded; ends when the main thread has seen enough
                if done.is_set():
                    return
                try:
                    response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA] * 2})
                except httpx2.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                body = response.json()
                seen[index].append((body["version"], [p["id"] for p in body["predictions"]]))

    def each_saw(version: int, times: int) -> bool:
        return all(sum(v == version for v, _ in mine) >= times for mine in seen)

    with serving(argv, port=port, env=env, log=log, ready="/readyz") as served:
        server = Steward(served, tmp_path / "data")
        threads = [threading.Thread(target=load, args=(i, server.url)) for i in range(clients)]
        for thread in threads:
            thread.start()
        try:
            assert wait_until(lambda: each_saw(1, 5), seconds=60), failures
            promoted = subprocess.run(
                [STEWARD, "promote", "iris", "2"], env=env, capture_output=True, text=True
            )
            assert promoted.returncode == 0, promoted.stderr
            assert wait_until(lambda: each_saw(2, 20) or bool(failures), seconds=60), failures
        finally:
            done.set()
            for thread in threads:
                thread.join()
        server.stop()
    assert failures == []
    for mine in seen:
        versions = [version for version, _ in mine]
        assert versions == sorted(versions), versions  # v1, then v2, never back
        assert set(versions) == {1, 2}
    answered = {pid: version for mine in seen for version, ids in mine for pid in ids}
    logged = {row["id"]: row["version"] for row in stored_rows(tmp_path / "data")}
    assert logged == answered
    assert "iris: production is v2 (was v1)" in log.read_text()
    assert "unloaded iris v1" in log.read_text()
