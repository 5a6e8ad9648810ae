"""Proof against a real Prometheus: Steward serves, Prometheus scrapes it every second and
evaluates the alert rules; every shipped expression is then asked of that Prometheus.

Needs Debian's `prometheus` package (prometheus + promtool): `make test` installs it.
"""

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from helpers import DIABETES_ROW, IRIS_SETOSA, wait_until
from promql import (
    DRIFT_METRICS,
    ROOT,
    SHADOW_ACCURACY,
    alert_rules,
    dashboard_expressions,
    docs_expression,
    docs_expressions,
    expressions_using,
    with_all_models,
)
from stack import instant_query, scraped

from app.aliases import set_alias
from app.artifacts import ARTIFACT, METADATA
from app.ids import new_ids
from app.store import PredictionRecord, open_store

PROMTOOL = shutil.which("promtool")
INSTALL_HINT = "Debian's prometheus package is missing: run `make test`, which installs it"


@dataclass
class Stack:
    steward: str
    prometheus: str
    # Each iris prediction the server returned, with the ground truth then sent for it: by the
    # production version (the champion), and by the candidate (the challenger).
    iris_feedback: list[tuple[str, str]] = field(default_factory=list)
    candidate_feedback: list[tuple[str, str]] = field(default_factory=list)
    # The candidate's shadow predictions of iris rows production served, with their ground truth.
    shadow_feedback: list[tuple[str, str]] = field(default_factory=list)
    # What production served for those same rows, with the same ground truth.
    champion_feedback: list[tuple[str, str]] = field(default_factory=list)

    def query(self, expr: str) -> list[dict[str, Any]]:
        return instant_query(self.prometheus, expr)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    assert wait_until(condition, seconds=30, interval=0.2), f"timed out waiting for {what}"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, INSTALL_HINT
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, cwd=ROOT / "prometheus"
    )


def add_refused_model(models: Path) -> None:
    """A copy of iris whose artifact was changed after registration: refused at load."""
    shutil.copytree(models / "iris", models / "broken")
    metadata = json.loads((models / "broken" / "1" / METADATA).read_text())
    (models / "broken" / "1" / METADATA).write_text(json.dumps(metadata | {"name": "broken"}))
    artifact = models / "broken" / "1" / ARTIFACT
    artifact.write_bytes(artifact.read_bytes() + b"\0")


def add_candidate(models: Path) -> None:
    """Iris version 2 (a copy of version 1), the candidate alias pointing at it."""
    shutil.copytree(models / "iris" / "1", models / "iris" / "2")
    metadata = json.loads((models / "iris" / "2" / METADATA).read_text())
    (models / "iris" / "2" / METADATA).write_text(json.dumps(metadata | {"version": 2}))
    set_alias(models, "iris", "candidate", 2)


def predict_and_label(http: httpx2.Client, path: str, truths: list[str]) -> list[tuple[str, str]]:
    """One iris prediction per truth, each labelled with it; (predicted, truth) pairs."""
    served = []
    for truth in truths:
        response = http.post(path, json={"instances": [IRIS_SETOSA]})
        (prediction,) = response.json()["predictions"]
        assert prediction["prediction"] == "setosa"
        body = {"prediction_id": prediction["id"], "ground_truth": truth}
        assert http.post("/feedback", json=body).status_code == 200
        served.append((prediction["prediction"], truth))
    return served


SHADOWED = [("setosa", "setosa"), ("virginica", "setosa"), ("setosa", "virginica")]
"""(the candidate's shadow prediction, the ground truth) of each shadowed iris row."""


def shadow_and_label(http: httpx2.Client, store_url: str) -> list[tuple[str, str]]:
    """Iris rows served by production, each shadowed by the candidate: its prediction logged as
    the request path's shadow lane logs it, ``shadow_of`` the served row (written here straight
    into the server's store), then the served row labelled. (predicted, truth) pairs of what
    production served."""
    store = open_store(store_url)
    served = []
    try:
        for shadowed, truth in SHADOWED:
            response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
            (prediction,) = response.json()["predictions"]
            (shadow_id,) = new_ids(1)
            names, row = tuple(IRIS_SETOSA), tuple(IRIS_SETOSA.values())
            now = datetime.now(UTC)
            record = PredictionRecord(shadow_id, "iris", 2, now, names, row, shadowed)
            store.write_predictions([record._replace(shadow_of=prediction["id"])])
            body = {"prediction_id": prediction["id"], "ground_truth": truth}
            assert http.post("/feedback", json=body).status_code == 200
            served.append((prediction["prediction"], truth))
    finally:
        store.close()
    return served


def drive_traffic(url: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Scripted traffic for a classifier (its production and its candidate version) and a
    regressor; returns each iris prediction served with the ground truth sent for it, by the
    production version and by the candidate. Every iris row is predicted setosa."""
    with httpx2.Client(base_url=url, timeout=10) as http:
        iris_feedback = predict_and_label(http, "/predict/iris", ["setosa"] * 6 + ["virginica"] * 2)
        candidate_feedback = predict_and_label(
            http, "/predict/iris?version=candidate", ["setosa"] + ["virginica"] * 3
        )
        rows = {"instances": [DIABETES_ROW, {**DIABETES_ROW, "bmi": -0.05}, DIABETES_ROW]}
        predicted = http.post("/predict/diabetes", json=rows).json()["predictions"]
        for prediction, value in zip(predicted, [150, 90.5, 200], strict=True):
            body = {"prediction_id": prediction["id"], "ground_truth": value}
            assert http.post("/feedback", json=body).status_code == 200
        assert http.post("/predict/iris", json={"instances": []}).status_code == 422
        assert http.post("/predict/nope", json={"instances": [IRIS_SETOSA]}).status_code == 404
        assert http.post("/predict/broken", json={"instances": [IRIS_SETOSA]}).status_code == 503
    return iris_feedback, candidate_feedback


@pytest.fixture(scope="module")
def stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack")
    models = work / "models"
    shutil.copytree(demo_models, models)
    add_refused_model(models)
    add_candidate(models)
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models),
        "STEWARD_DATA_DIR": str(work / "data"),
        # The scripted traffic is a dozen rows per version: judge drift from 3, every second.
        "STEWARD_DRIFT_MIN_ROWS": "3",
        "STEWARD_DRIFT_INTERVAL_SECONDS": "1",
    }
    with scraped(work, env, ready="/healthz") as (steward, prometheus):
        stack = Stack(steward.url, prometheus.url)
        # Load the candidate (versions load on first use), then let Prometheus see every series
        # at 0 first, so rates count all that follows.
        candidate = httpx2.post(
            f"{steward.url}/predict/iris?version=candidate", json={"instances": [IRIS_SETOSA]}
        )
        assert candidate.json()["version"] == 2
        wait_for(lambda: len(stack.query('steward_feedback_total{model="iris"}')) == 10, "scrape")
        stack.iris_feedback, stack.candidate_feedback = drive_traffic(steward.url)
        with httpx2.Client(base_url=steward.url, timeout=10) as http:
            stack.champion_feedback = shadow_and_label(
                http, f"sqlite:///{work / 'data' / 'steward.db'}"
            )
        stack.iris_feedback += stack.champion_feedback
        stack.shadow_feedback = SHADOWED

        def scraped_everything() -> bool:
            labelled = stack.query(
                'sum(steward_feedback_total{outcome=~"correct|incorrect|labelled"})'
            )
            shadows = stack.query(
                'sum(steward_shadow_feedback_total{role="challenger",outcome=~"correct|incorrect"})'
            )
            return (
                bool(labelled)
                and float(labelled[0]["value"][1]) == 15 + len(SHADOWED)
                and bool(shadows)
                and float(shadows[0]["value"][1]) == len(SHADOWED)
            )

        wait_for(scraped_everything, "the scripted traffic to be scraped")
        time.sleep(2)  # two more scrapes: every rate() window ends after the traffic
        yield stack


OUT_OF_RANGE = {**IRIS_SETOSA, "petal_length_cm": 9.0}
"""An iris row the server accepts (within STEWARD_INPUT_RANGE_MULTIPLE) with a petal longer than
any in iris' training data (6.9 cm at most): one ``out_of_range`` value."""


@pytest.fixture(scope="module")
def drifted(stack: Stack) -> Stack:
    """The stack once its server has judged drift on the scripted traffic (a dozen copies of one
    setosa row: every iris feature drifts) and on one row out of iris' training range, and
    Prometheus has scraped every drift expression docs/metrics.md ships."""
    response = httpx2.post(f"{stack.steward}/predict/iris", json={"instances": [OUT_OF_RANGE]})
    assert response.status_code == 200
    documented = docs_expressions()
    drift = {e for m in DRIFT_METRICS for e in expressions_using(documented, m)}
    wait_for(lambda: all(stack.query(e) for e in drift), "drift to be judged and scraped")
    return stack


def test_promtool_checks_the_shipped_files() -> None:
    for args in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ):
        result = promtool(*args)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_promtool_finds_no_problem_in_metrics(stack: Stack) -> None:
    text = httpx2.get(f"{stack.steward}/metrics").text
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0
    problems = (result.stdout + result.stderr).strip()
    assert problems == ""


def test_every_dashboard_panel_returns_data(drifted: Stack) -> None:
    for expr in dashboard_expressions():
        assert drifted.query(with_all_models(expr)), f"no data for dashboard expression:\n{expr}"


def test_every_documented_expression_returns_data(drifted: Stack) -> None:
    for expr in docs_expressions():
        assert drifted.query(expr), f"no data for docs/metrics.md expression:\n{expr}"


def test_drift_reaches_prometheus_and_its_alert(drifted: Stack) -> None:
    """The one out-of-range value served is counted once, on its feature; the copies of one row
    are drift, so StewardInputDrift is pending for iris (it fires after 30 minutes)."""
    expected = {("petal_length_cm", "out_of_range"): 1.0}

    def issues() -> dict[tuple[str, str], float]:
        counted = drifted.query(
            'sum by (feature, issue) (steward_data_quality_total{model="iris", version="1"}) > 0'
        )
        return {
            (r["metric"]["feature"], r["metric"]["issue"]): float(r["value"][1]) for r in counted
        }

    wait_until(lambda: issues() == expected, seconds=30, interval=0.2)
    assert issues() == expected
    (status,) = drifted.query('max by (model) (steward_model_drift_status{model="iris"})')
    assert float(status["value"][1]) == 2

    def pending() -> bool:
        alerts = httpx2.get(f"{drifted.prometheus}/api/v1/alerts").json()["data"]["alerts"]
        return any(
            a["labels"]["alertname"] == "StewardInputDrift"
            and a["labels"]["model"] == "iris"
            and a["state"] == "pending"
            for a in alerts
        )

    wait_for(pending, "StewardInputDrift to be pending for iris")


def test_every_alert_expression_evaluates_and_the_rules_are_healthy(stack: Stack) -> None:
    for rule in alert_rules():
        stack.query(rule["expr"])  # asserts status success
    groups = httpx2.get(f"{stack.prometheus}/api/v1/rules").json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == {rule["alert"] for rule in alert_rules()}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"


def test_refused_model_alert_fires(stack: Stack) -> None:
    def firing() -> bool:
        alerts = httpx2.get(f"{stack.prometheus}/api/v1/alerts").json()["data"]["alerts"]
        return any(
            a["labels"]["alertname"] == "StewardModelRefused"
            and a["labels"]["model"] == "broken"
            and a["state"] == "firing"
            for a in alerts
        )

    wait_for(firing, "StewardModelRefused to fire for the broken model")


def test_prometheus_accuracy_is_that_of_the_predictions_served(stack: Stack) -> None:
    """The documented accuracy expression, asked of Prometheus, against the accuracy of what the
    server answered (its predictions vs the ground truth sent for them)."""
    (accuracy_expr,) = [
        e
        for e in docs_expressions()
        if 'outcome="correct"}[1h]))\n/' in e and "steward_shadow_" not in e
    ]
    by_version = {
        (r["metric"]["model"], r["metric"]["version"]): float(r["value"][1])
        for r in stack.query(accuracy_expr)
    }
    assert by_version[("iris", "1")] == pytest.approx(accuracy(stack.iris_feedback), abs=1e-9)
    assert by_version[("iris", "2")] == pytest.approx(accuracy(stack.candidate_feedback), abs=1e-9)


def test_champion_vs_challenger_is_the_accuracy_of_each_alias(stack: Stack) -> None:
    """The documented champion-vs-challenger expression: each alias of iris with its version
    and the accuracy of the predictions that version served."""
    (expr,) = [
        e for e in docs_expressions() if "group_right" in e and "steward_feedback_total" in e
    ]
    by_alias = {
        r["metric"]["alias"]: (r["metric"]["version"], float(r["value"][1]))
        for r in stack.query(expr)
        if r["metric"]["model"] == "iris"
    }
    assert set(by_alias) == {"production", "candidate"}
    assert by_alias["production"][0] == "1"
    assert by_alias["candidate"][0] == "2"
    assert by_alias["production"][1] == pytest.approx(accuracy(stack.iris_feedback), abs=1e-9)
    assert by_alias["candidate"][1] == pytest.approx(accuracy(stack.candidate_feedback), abs=1e-9)
    assert accuracy(stack.iris_feedback) != accuracy(stack.candidate_feedback)


def test_champion_and_shadow_challenger_on_the_same_labels(stack: Stack) -> None:
    """The documented shadow expression: the candidate's accuracy on the rows it shadowed, and
    production's on exactly those rows, against the ground truth sent for them."""
    expr = docs_expression(SHADOW_ACCURACY)
    found = {
        (r["metric"]["role"], r["metric"]["version"]): float(r["value"][1])
        for r in stack.query(expr)
        if r["metric"]["model"] == "iris"
    }
    assert found == {
        ("challenger", "2"): pytest.approx(accuracy(stack.shadow_feedback), abs=1e-9),
        ("champion", "1"): pytest.approx(accuracy(stack.champion_feedback), abs=1e-9),
    }
    assert accuracy(stack.shadow_feedback) != accuracy(stack.champion_feedback)


def accuracy(feedback: list[tuple[str, str]]) -> float:
    """The accuracy of the predictions served, against the ground truth sent for them."""
    outcomes = [predicted == truth for predicted, truth in feedback]
    assert True in outcomes, "a ratio to get right: some predictions correct"
    assert False in outcomes, "a ratio to get right: some predictions wrong"
    return outcomes.count(True) / len(outcomes)
