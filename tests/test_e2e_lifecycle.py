"""A model's change in production, end to end, through a real `steward serve`, the real CLI in
other processes and a real Prometheus scraping the server:

train v1 -> serve -> train v2 -> v2 candidate -> shadow -> predictions and feedback -> both
versions' accuracy on the same labels, in GET /models/iris and in Prometheus -> promote v2 over
the admin API (no token, a wrong one, the right one) under load -> `steward rollback` -> v1,
with not one failed request and every response naming the version that served it.
"""

import csv
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from helpers import stored_rows, wait_until
from promql import SHADOW_ACCURACY, docs_expression
from server import STEWARD
from sklearn.datasets import load_iris
from stack import instant_query, scraped

from app.artifacts import load_estimator, read_metadata

TOKEN = "e2e-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def write_iris_csv(path: Path, *, noisy: bool) -> None:
    """Iris with its species names; ``noisy`` relabels every third versicolor as virginica, so
    the version trained on it is measurably worse than one trained on the clean data."""
    data = load_iris()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "species"])
        for i, (row, target) in enumerate(zip(data.data, data.target, strict=True)):
            species = str(data.target_names[target])
            if noisy and species == "versicolor" and i % 3 == 0:
                species = "virginica"
            writer.writerow([*row.tolist(), species])


def instances() -> tuple[list[dict[str, float]], list[str]]:
    """Every iris row as a /predict instance, and its true species."""
    data = load_iris()
    rows = [dict(zip(FEATURES, row.tolist(), strict=True)) for row in data.data]
    return rows, [str(data.target_names[t]) for t in data.target]


def cli(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([STEWARD, *argv], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Load:
    """Clients posting to /predict/iris until stopped; what each saw, and every failure."""

    url: str
    clients: int = 4
    seen: list[list[tuple[int, list[str]]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.seen = [[] for _ in range(self.clients)]
        for index in range(self.clients):
            thread = threading.Thread(target=self._run, args=(index,))
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join()

    def saw(self, version: int, times: int) -> bool:
        """Whether every client got at least ``times`` answers from ``version`` (a failure
        ends the wait too)."""
        if self.failures:
            return True
        return all(sum(v == version for v, _ in mine[-times:]) >= times for mine in self.seen)

    def _run(self, index: int) -> None:
        row = instances()[0][0]
        with httpx2.Client(base_url=self.url, timeout=30) as http:
            for _ in range(50_000):  # bounded; ends when the test has seen enough
                if self._done.is_set():
                    return
                try:
                    response = http.post("/predict/iris", json={"instances": [row, row]})
                except httpx2.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                    continue
                body = response.json()
                self.seen[index].append((body["version"], [p["id"] for p in body["predictions"]]))


@dataclass
class Stack:
    steward: str
    prometheus: str
    env: dict[str, str]
    models: Path
    data: Path
    log: Path

    def raw(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query's result."""
        return instant_query(self.prometheus, expr)

    def query(self, expr: str) -> dict[str, float]:
        """An instant PromQL query: value by version."""
        return {r["metric"].get("version", ""): float(r["value"][1]) for r in self.raw(expr)}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    models, data = tmp_path / "models", tmp_path / "data"
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models),
        "STEWARD_DATA_DIR": str(data),
        "STEWARD_ADMIN_TOKEN": TOKEN,
        "STEWARD_RELOAD_INTERVAL_SECONDS": "0.3",
    }
    write_iris_csv(tmp_path / "v1.csv", noisy=True)
    trained = cli(env, "train", "--csv", str(tmp_path / "v1.csv"), "--target", "species",
                  "--name", "iris")  # fmt: skip
    assert "version 1" in trained
    with scraped(tmp_path, env) as (steward, prometheus):
        yield Stack(steward.url, prometheus.url, env, models, data, tmp_path / "steward.log")
        code = steward.stop(timeout=30)
        assert code in (0, -15), (tmp_path / "steward.log").read_text()


def expected_accuracy(
    models: Path, version: int, rows: list[dict[str, float]], truth: list[str]
) -> float:
    """The accuracy of ``version`` on the rows, computed here from its artifact."""
    metadata = read_metadata(models, "iris", version)
    estimator = load_estimator(models, metadata)
    matrix = np.array([[row[f] for f in FEATURES] for row in rows])
    assert metadata.input_format == "array"
    assert metadata.classes is not None
    predicted = [metadata.classes[i] for i in estimator.predict_proba(matrix).argmax(axis=1)]
    return float(sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth))


def test_train_shadow_score_promote_under_load_and_roll_back(stack: Stack, tmp_path: Path) -> None:
    http = httpx2.Client(base_url=stack.steward, timeout=30)

    # v2 is trained while v1 serves; the server lists it without a restart.
    write_iris_csv(tmp_path / "v2.csv", noisy=False)
    assert "version 2" in cli(stack.env, "train", "--csv", str(tmp_path / "v2.csv"),
                              "--target", "species", "--name", "iris")  # fmt: skip
    assert wait_until(lambda: summary(http)["versions"] == [1, 2], seconds=10)
    assert summary(http)["serving"] == 1

    # The CLI makes it the candidate; the admin API puts it in shadow of every request.
    cli(stack.env, "promote", "iris", "2", "--alias", "candidate")
    assert wait_until(lambda: summary(http)["aliases"].get("candidate") == 2, seconds=10)
    shadow = http.put("/admin/models/iris/traffic", json={"mode": "shadow"}, headers=AUTH)
    assert shadow.status_code == 200, shadow.text
    assert shadow.json()["traffic"] | {"at": None} == {
        "mode": "shadow", "percent": 100.0, "candidate": 2, "at": None, "by": "admin-api",
        "active": True, "inactive_reason": None,
    }  # fmt: skip

    # Prometheus sees the candidate's series at 0 first, so that rate() counts what follows.
    zero = 'steward_shadow_feedback_total{model="iris",role="challenger",outcome="correct"}'
    assert wait_until(lambda: stack.query(zero).get("2") == 0.0, seconds=30)

    # Every iris row, predicted by production (v1) and shadowed by the candidate, then labelled.
    rows, truth = instances()
    ids: list[str] = []
    for start in range(0, len(rows), 10):
        answer = http.post("/predict/iris", json={"instances": rows[start : start + 10]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == 1
        ids += [p["id"] for p in answer.json()["predictions"]]
    items = [{"prediction_id": i, "ground_truth": t} for i, t in zip(ids, truth, strict=True)]
    labelled = http.post("/feedback", json={"items": items})
    assert labelled.json()["accepted"] == len(rows), labelled.text
    champion = expected_accuracy(stack.models, 1, rows, truth)
    challenger = expected_accuracy(stack.models, 2, rows, truth)
    assert champion < challenger  # v1 learnt from noisy labels

    check_live_quality(http, champion, challenger, len(rows))
    check_prometheus(stack, champion, challenger, len(rows))

    # Promote v2 over the admin API while clients keep predicting: no request fails.
    load = Load(stack.steward)
    load.start()
    try:
        assert wait_until(lambda: load.saw(1, 5), seconds=30), load.failures
        promote = "/admin/models/iris/promote"
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
            denied = http.post(promote, json={"version": 2}, headers=headers)
            assert denied.status_code == 401
            assert denied.json()["error"]["code"] == "unauthorized"
        assert summary(http)["serving"] == 1
        promoted = http.post(promote, json={"version": 2}, headers=AUTH)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["serving"]["serving"] == 2
        assert promoted.json()["traffic"]["mode"] == "none"  # the experiment is over
        assert wait_until(lambda: load.saw(2, 20), seconds=30), load.failures

        # ... and roll back with the CLI, from another process: v1 serves again.
        assert "production -> version 1" in cli(stack.env, "rollback", "iris")
        assert wait_until(lambda: load.saw(1, 20), seconds=30), load.failures
    finally:
        load.stop()
    assert load.failures == []
    for mine in load.seen:
        versions = [version for version, _ in mine]
        changes = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
        assert changes == [1, 2, 1], changes  # each client: v1, then v2, then v1, never mixed
    answered = {pid: version for mine in load.seen for version, ids in mine for pid in ids}
    http.close()
    stack_log = stack.log.read_text()
    assert "iris: production is v2 (was v1)" in stack_log
    assert "iris: production is v1 (was v2)" in stack_log

    # The last answers may still wait in the writer's buffer: it flushes within its interval.
    def logged() -> dict[str, int | None]:
        stored = {row["id"]: row["version"] for row in stored_rows(stack.data)}
        return {pid: stored.get(pid) for pid in answered}

    assert wait_until(lambda: None not in logged().values(), seconds=10)
    assert logged() == answered


def summary(http: httpx2.Client) -> dict[str, Any]:
    (iris,) = [m for m in http.get("/models").json() if m["name"] == "iris"]
    return dict(iris)


def check_live_quality(http: httpx2.Client, champion: float, challenger: float, rows: int) -> None:
    """GET /models/iris: v1's served predictions and v2's shadow predictions, on the same labels."""
    report = http.get("/models/iris").json()
    quality = {(q["version"], q["role"]): q for q in report["quality"]}
    assert quality[(1, "served")]["labelled"] == rows
    assert quality[(1, "served")]["accuracy"] == pytest.approx(champion, abs=1e-12)
    assert quality[(2, "shadow")]["labelled"] == rows
    assert quality[(2, "shadow")]["accuracy"] == pytest.approx(challenger, abs=1e-12)
    (pair,) = report["paired"]
    assert (pair["champion"], pair["challenger"], pair["labelled"]) == (1, 2, rows)
    assert pair["champion_accuracy"] == pytest.approx(champion, abs=1e-12)
    assert pair["challenger_accuracy"] == pytest.approx(challenger, abs=1e-12)


def check_prometheus(stack: Stack, champion: float, challenger: float, rows: int) -> None:
    """The same two accuracies, as Prometheus computes them from what it scraped with the
    documented champion-vs-challenger expression: both roles on the same labelled rows."""
    expr = docs_expression(SHADOW_ACCURACY)
    labelled = 'sum(steward_shadow_feedback_total{model="iris",outcome=~"correct|incorrect"})'
    assert wait_until(lambda: stack.query(labelled).get("") == 2 * rows, seconds=30)

    def by_role() -> dict[tuple[str, str], float]:
        return {
            (r["metric"]["role"], r["metric"]["version"]): float(r["value"][1])
            for r in stack.raw(expr)
            if r["metric"]["model"] == "iris"
        }

    assert wait_until(lambda: len(by_role()) == 2, seconds=30)  # rate() needs two scrapes
    assert by_role() == {
        ("champion", "1"): pytest.approx(champion, abs=1e-12),
        ("challenger", "2"): pytest.approx(challenger, abs=1e-12),
    }
