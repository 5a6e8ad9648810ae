"""Two replicas end to end: two `steward serve` processes on different ports sharing one
PostgreSQL database and one registry folder, both scraped by a real Prometheus.

Predictions made by one replica get their feedback through the other; Prometheus' fleet-wide
accuracy (docs/metrics.md, the expression as written) is the true accuracy of that feedback;
an alias change made through one replica's admin API is served by both within
STEWARD_RELOAD_INTERVAL_SECONDS.
"""

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from helpers import ADMIN_AUTH, ADMIN_TOKEN, postgres_database, postgres_url, wait_until
from promql import docs_section_expression
from server import STEWARD, Server, free_port, serving
from sklearn.datasets import load_iris
from stack import instant_query, prometheus

from app.training import train_demo

RELOAD = 0.5  # STEWARD_RELOAD_INTERVAL_SECONDS of both replicas
ACCURACY = "### Accuracy on feedback"
"""The heading of docs/metrics.md's fleet-wide accuracy expression."""
LABELLED = (
    'sum by (instance) (steward_feedback_total{model="iris",version="1",'
    'outcome=~"correct|incorrect"})'
)
FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")


@dataclass
class Fleet:
    a: Server
    b: Server
    prometheus: Server
    models: Path

    def instance(self, server: Server) -> str:
        """The ``instance`` label Prometheus gives ``server``'s series."""
        return server.url.removeprefix("http://")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query's result."""
        return instant_query(self.prometheus.url, expr)

    def by_instance(self, expr: str) -> dict[str, float]:
        return {r["metric"]["instance"]: float(r["value"][1]) for r in self.query(expr)}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    models = tmp_path / "models"
    train_demo(models, promote=True)  # iris v1 (and diabetes v1) in production
    with postgres_database("steward_replicas") as database, ExitStack() as running:
        servers = []
        for name in ("a", "b"):
            env = os.environ | {
                "STEWARD_MODELS_DIR": str(models),
                "STEWARD_DATA_DIR": str(tmp_path / f"data-{name}"),
                "STEWARD_DATABASE_URL": postgres_url(database),
                "STEWARD_ADMIN_TOKEN": ADMIN_TOKEN,
                "STEWARD_RELOAD_INTERVAL_SECONDS": str(RELOAD),
            }
            port = free_port()
            argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
            log = tmp_path / f"{name}.log"
            servers.append(
                running.enter_context(serving(argv, port=port, env=env, log=log, ready="/readyz"))
            )
        targets = [server.url.removeprefix("http://") for server in servers]
        scraper = running.enter_context(prometheus(tmp_path, targets, os.environ))
        a, b = servers
        yield Fleet(a, b, scraper, models)
        for server in servers:  # graceful: every acknowledged row written
            assert server.stop(timeout=30) == 0, server.log.read_text()
            assert "unwritten" not in server.log.read_text()


def iris_rows(count: int) -> list[dict[str, float]]:
    """``count`` rows of the iris data set, spread over its three species."""
    data = load_iris().data
    step = len(data) // count
    return [dict(zip(FEATURES, row.tolist(), strict=True)) for row in data[::step][:count]]


def predict_and_label(
    predictor: Server, labeller: Server, rows: list[dict[str, float]], wrong: int
) -> None:
    """Predict ``rows`` on one replica, and send their ground truth to the other at once: the
    prediction's own class for all but the last ``wrong``, another class for those."""
    with httpx2.Client(base_url=predictor.url, timeout=60) as http:
        answer = http.post("/predict/iris", json={"instances": rows})
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 1
    predictions = answer.json()["predictions"]
    classes = ["setosa", "versicolor", "virginica"]
    items = []
    for index, prediction in enumerate(predictions):
        truth = prediction["prediction"]
        if index >= len(predictions) - wrong:
            truth = classes[(classes.index(truth) + 1) % 3]
        items.append({"prediction_id": prediction["id"], "ground_truth": truth})
    with httpx2.Client(base_url=labeller.url, timeout=60) as http:
        single = http.post("/feedback", json=items[0])  # one alone, the rest as a batch
        batch = http.post("/feedback", json={"items": items[1:]})
    assert single.status_code == 200, single.text
    assert single.json()["status"] == "accepted"
    assert batch.status_code == 200, batch.text
    assert (batch.json()["accepted"], batch.json()["failed"]) == (len(items) - 1, 0), batch.text


def served_version(server: Server) -> int:
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        answer = http.post("/predict/iris", json={"instances": iris_rows(1)})
    assert answer.status_code == 200, answer.text
    version: int = answer.json()["version"]
    return version


def test_two_replicas_add_up_in_prometheus_and_follow_one_alias_change(fleet: Fleet) -> None:
    a, b = fleet.instance(fleet.a), fleet.instance(fleet.b)
    # Both replicas' counters are scraped at 0 first, so that rate() counts all that follows.
    assert wait_until(lambda: fleet.by_instance(LABELLED) == {a: 0.0, b: 0.0}, seconds=60)

    # 40 predictions on A labelled through B (30 right), 8 on B labelled through A (6 right).
    # Each replica's share has the same accuracy (0.75): rate() extrapolates each instance's
    # series by its own scrape times, so only then is the fleet's ratio of rates exact to the
    # last digit; the counts below tell the two replicas apart.
    predict_and_label(fleet.a, fleet.b, iris_rows(40), wrong=10)
    predict_and_label(fleet.b, fleet.a, iris_rows(8), wrong=2)

    correct = 'steward_feedback_total{model="iris",version="1",outcome="correct"}'
    assert wait_until(lambda: fleet.by_instance(LABELLED) == {a: 8.0, b: 40.0}, seconds=60)
    assert fleet.by_instance(correct) == {a: 6.0, b: 30.0}
    assert fleet.by_instance('up{job="steward"}') == {a: 1.0, b: 1.0}

    results = fleet.query(docs_section_expression(ACCURACY))
    assert all(set(r["metric"]) == {"model", "version"} for r in results)  # fleet-wide
    (iris,) = [float(r["value"][1]) for r in results if r["metric"]["model"] == "iris"]
    assert iris == pytest.approx(36 / 48, rel=1e-12)  # (the other classifier has none: NaN)

    # v2 of iris appears in the shared registry; both replicas list it by themselves.
    train_demo(fleet.models)  # new versions, production unchanged
    for server in (fleet.a, fleet.b):
        with httpx2.Client(base_url=server.url, timeout=60) as http:
            assert wait_until(
                lambda: http.get("/models/iris").json()["versions"][-1]["version"] == 2,
                seconds=30,
            ), http.get("/models/iris").text
    assert (served_version(fleet.a), served_version(fleet.b)) == (1, 1)

    # Promoted through A's admin API: A serves it at once, B within its reload interval.
    with httpx2.Client(base_url=fleet.a.url, timeout=60) as http:
        promoted = http.post("/admin/models/iris/promote", json={"version": 2}, headers=ADMIN_AUTH)
    assert promoted.status_code == 200, promoted.text
    started = time.monotonic()
    assert served_version(fleet.a) == 2
    assert wait_until(lambda: served_version(fleet.b) == 2, seconds=RELOAD + 10, interval=0.05)
    print(f"\nB served v2 {time.monotonic() - started:.2f} s after A's promote answered")
    for _ in range(10):  # and stays there, on both
        assert (served_version(fleet.a), served_version(fleet.b)) == (2, 2)
