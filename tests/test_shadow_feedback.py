"""Shadow predictions scored on live feedback: a scripted sequence through the real app.

Served rows come from POST /predict; their shadow rows (the candidate's predictions, never
returned) are built as the request path's shadow lane builds them, ``PredictionRecord(...,
shadow_of=<served id>)``, and go through the app's own PredictionLog into its SQLite store.
Feedback then goes through POST /feedback, and the test checks the exact store contents, the
exact live quality of GET /models/{model} and the exact counters of /metrics.
"""

import json
import math
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import (
    DIABETES_ROW,
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    assert_error,
    metric,
    predict,
    run_cli,
    stored_rows,
    stored_shadow_rows,
)

from app.aliases import set_alias
from app.ids import new_ids
from app.main import create_app
from app.services import Services
from app.settings import Settings
from app.store import PredictionRecord
from app.training import train_demo

UNSCORABLE = -4.18e301  # a shadow prediction whose error no ground truth can make finite


def served(client: TestClient, model: str, *rows: dict[str, Any]) -> list[tuple[str, Any]]:
    """(id, prediction) of each row, as the client was answered."""
    response = predict(client, model, *rows)
    assert response.status_code == 200, response.text
    return [(p["id"], p["prediction"]) for p in response.json()["predictions"]]


def shadow(
    model: str, served_id: str, row: dict[str, Any], prediction: str | float
) -> PredictionRecord:
    """The candidate's (version 2) prediction of a served row, as its shadow lane logs it."""
    (shadow_id,) = new_ids(1)
    return PredictionRecord(
        shadow_id,
        model,
        2,
        datetime.now(UTC),
        tuple(row),
        tuple(row.values()),
        prediction,
        shadow_of=served_id,
    )


def load_candidate(client: TestClient, model: str) -> None:
    """Load the candidate, as the shadow lane does before its first shadow prediction."""
    services: Services = client.app_state["services"]
    assert services.registry.resolve(model, "candidate").version == 2


def send(client: TestClient, prediction_id: str, truth: object) -> tuple[int, str | None]:
    response = client.post(
        "/feedback", json={"prediction_id": prediction_id, "ground_truth": truth}
    )
    body = response.json()
    return response.status_code, body.get("status")


def shadow_feedback(
    client: TestClient, model: str, outcome: str, role: str = "challenger", version: str = "2"
) -> float:
    """A shadow-pair counter: the challenger's (v2) outcome, or the champion's (v1) on the same
    rows."""
    labels = {"model": model, "version": version, "role": role, "outcome": outcome}
    return metric(client, "steward_shadow_feedback_total", **labels)


def feedback_total(client: TestClient, model: str, version: str, outcome: str) -> float:
    return metric(client, "steward_feedback_total", model=model, version=version, outcome=outcome)


def report(client: TestClient, model: str) -> dict[str, Any]:
    services: Services = client.app_state["services"]
    services.log.flush()
    response = client.get(f"/models/{model}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = json.loads(response.text, parse_constant=_refuse_constant)
    return body


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"{name} in a JSON response")


@pytest.fixture
def candidates(settings: Settings) -> Settings:
    """Version 2 of each demo model (trained through our own code), iris and diabetes' as the
    candidate."""
    train_demo(settings.models_dir)
    for model in ("iris", "diabetes"):
        set_alias(settings.models_dir, model, "candidate", 2)
    return settings


def test_a_classifier_and_its_shadow_scored_on_the_same_labels(candidates: Settings) -> None:
    with TestClient(create_app(candidates)) as client:
        services: Services = client.app_state["services"]
        log = services.log
        load_candidate(client, "iris")
        assert shadow_feedback(client, "iris", "correct") == 0  # series at 0 from the start
        assert shadow_feedback(client, "iris", "incorrect") == 0
        rows = [IRIS_SETOSA, IRIS_SETOSA, IRIS_VIRGINICA, IRIS_VIRGINICA]
        (a, pa), (b, pb), (c, pc), (d, pd) = served(client, "iris", *rows)
        assert (pa, pb, pc, pd) == ("setosa", "setosa", "virginica", "virginica")
        sa = shadow("iris", a, IRIS_SETOSA, "setosa")
        sb = shadow("iris", b, IRIS_SETOSA, "versicolor")
        sc = shadow("iris", c, IRIS_VIRGINICA, "virginica")
        log.append([sa, sb, sc])  # d has no shadow
        assert send(client, a, "setosa") == (200, "accepted")  # both right
        assert send(client, b, "setosa") == (200, "accepted")  # the shadow wrong
        assert send(client, c, "versicolor") == (200, "accepted")  # both wrong
        assert send(client, d, "virginica") == (200, "accepted")  # served only
        assert send(client, a, "setosa") == (200, "duplicate")
        conflict = client.post("/feedback", json={"prediction_id": b, "ground_truth": "virginica"})
        assert_error(conflict, 409, "feedback_conflict")
        assert send(client, sa.id, "setosa") == (404, None)  # a shadow row is no feedback target

        # feedback while the shadow row is still in the log's buffer: the store is locked from
        # outside, so the writer cannot take it; feedback waits for it and labels both
        ((e, _),) = served(client, "iris", IRIS_SETOSA)
        log.flush()
        se = shadow("iris", e, IRIS_SETOSA, "setosa")
        locker = sqlite3.connect(
            candidates.data_dir / "steward.db", isolation_level=None, check_same_thread=False
        )
        locker.execute("BEGIN IMMEDIATE")
        log.append([se])
        assert log.pending == 1
        release = threading.Timer(0.5, locker.execute, ("COMMIT",))
        release.start()
        assert send(client, e, "setosa") == (200, "accepted")
        release.join()
        locker.close()

        # concurrent duplicates for one row: served and shadow rows labelled exactly once
        ((f, _),) = served(client, "iris", IRIS_SETOSA)
        sf = shadow("iris", f, IRIS_SETOSA, "virginica")
        log.append([sf])
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: send(client, f, "setosa"), range(8)))
        assert sorted(answers) == [(200, "accepted")] + [(200, "duplicate")] * 7

        assert feedback_total(client, "iris", "1", "correct") == 5  # a, b, d, e, f
        assert feedback_total(client, "iris", "1", "incorrect") == 1  # c
        assert feedback_total(client, "iris", "1", "duplicate") == 8
        assert feedback_total(client, "iris", "1", "conflict") == 1
        for outcome in ("correct", "incorrect", "duplicate", "conflict", "invalid"):
            assert feedback_total(client, "iris", "2", outcome) == 0  # v2 answered no client
        assert shadow_feedback(client, "iris", "correct") == 2  # sa, se
        assert shadow_feedback(client, "iris", "incorrect") == 3  # sb, sc, sf
        # the champion on the same five rows, and only those (d had no shadow)
        assert shadow_feedback(client, "iris", "correct", "champion", "1") == 4  # a, b, e, f
        assert shadow_feedback(client, "iris", "incorrect", "champion", "1") == 1  # c

        body = report(client, "iris")
    assert body["quality"] == [
        {"version": 1, "role": "served", "predictions": 6, "labelled": 6, "accuracy": 5 / 6,
         "mae": None, "rmse": None},
        {"version": 2, "role": "served", "predictions": 0, "labelled": 0, "accuracy": None,
         "mae": None, "rmse": None},
        {"version": 2, "role": "shadow", "predictions": 5, "labelled": 5, "accuracy": 0.4,
         "mae": None, "rmse": None},
    ]  # fmt: skip
    assert body["paired"] == [
        {"champion": 1, "challenger": 2, "labelled": 5,
         "champion_accuracy": 0.8, "challenger_accuracy": 0.4,  # a b c e f: 4 right; sa se
         "champion_mae": None, "challenger_mae": None,
         "champion_rmse": None, "challenger_rmse": None},
    ]  # fmt: skip
    shadows = {row["id"]: row for row in stored_shadow_rows(candidates.data_dir)}
    assert {i: (r["prediction_id"], r["model"], r["version"]) for i, r in shadows.items()} == {
        s.id: (s.shadow_of, "iris", 2) for s in (sa, sb, sc, se, sf)
    }
    assert {i: (json.loads(r["ground_truth"]), r["correct"]) for i, r in shadows.items()} == {
        sa.id: ("setosa", 1),
        sb.id: ("setosa", 0),  # the served label that landed, not the conflicting one
        sc.id: ("versicolor", 0),
        se.id: ("setosa", 1),
        sf.id: ("setosa", 0),
    }
    assert all(json.loads(r["output"]) == {"prediction": s.prediction}
               for s in (sa, sb, sc, se, sf) for r in [shadows[s.id]])  # fmt: skip
    served_rows = {row["id"]: row for row in stored_rows(candidates.data_dir)}
    assert set(served_rows) == {a, b, c, d, e, f}  # shadow rows never in predictions
    for s in (sa, sb, sc, se, sf):  # labelled in the served row's transaction, at its time
        assert shadows[s.id]["feedback_at"] == served_rows[str(s.shadow_of)]["feedback_at"]


def test_a_regressor_shadow_whose_error_cannot_be_scored(candidates: Settings) -> None:
    """Its served row is labelled all the same; the shadow stays unlabelled, counted invalid."""
    with TestClient(create_app(candidates)) as client:
        log = client.app_state["services"].log
        load_candidate(client, "diabetes")
        assert shadow_feedback(client, "diabetes", "invalid") == 0
        for name in ("absolute_error", "squared_error"):
            labels = {"model": "diabetes", "version": "2", "role": "challenger"}
            assert metric(client, f"steward_shadow_feedback_{name}_total", **labels) == 0
        (g, pg), (h, ph), (i, pi) = served(client, "diabetes", *[DIABETES_ROW] * 3)
        log.append(
            [
                shadow("diabetes", g, DIABETES_ROW, 100.0),
                shadow("diabetes", h, DIABETES_ROW, 200.0),
                shadow("diabetes", i, DIABETES_ROW, UNSCORABLE),
            ]
        )
        for prediction_id in (g, h, i):
            assert send(client, prediction_id, 150.0) == (200, "accepted")
        assert send(client, i, 150.0) == (200, "duplicate")  # the shadow is not counted again
        assert feedback_total(client, "diabetes", "1", "labelled") == 3
        assert feedback_total(client, "diabetes", "1", "invalid") == 0
        assert shadow_feedback(client, "diabetes", "labelled") == 2
        assert shadow_feedback(client, "diabetes", "invalid") == 1
        labels = {"model": "diabetes", "version": "2", "role": "challenger"}
        assert metric(client, "steward_shadow_feedback_absolute_error_total", **labels) == 100.0
        assert metric(client, "steward_shadow_feedback_squared_error_total", **labels) == 5000.0
        # the champion, on the two rows its challenger was scored on (g and h), not on i
        champion = {"model": "diabetes", "version": "1", "role": "champion"}
        assert shadow_feedback(client, "diabetes", "labelled", "champion", "1") == 2
        expected = [abs(p - 150.0) for p in (pg, ph)]
        assert metric(
            client, "steward_shadow_feedback_absolute_error_total", **champion
        ) == pytest.approx(sum(expected))
        assert metric(
            client, "steward_shadow_feedback_squared_error_total", **champion
        ) == pytest.approx(sum(e * e for e in expected))
        body = report(client, "diabetes")
    served_errors = [abs(p - 150.0) for p in (pg, ph, pi)]
    (one, two, two_shadow) = body["quality"]
    assert (one["version"], one["role"], one["labelled"]) == (1, "served", 3)
    assert one["mae"] == pytest.approx(sum(served_errors) / 3)
    assert (two["role"], two["predictions"]) == ("served", 0)
    assert two_shadow == {"version": 2, "role": "shadow", "predictions": 3, "labelled": 2,
                          "accuracy": None, "mae": 50.0, "rmse": 50.0}  # fmt: skip
    (paired,) = body["paired"]
    pair_errors = served_errors[:2]  # the unscorable shadow's row is not a pair
    assert paired == {
        "champion": 1,
        "challenger": 2,
        "labelled": 2,
        "champion_accuracy": None,
        "challenger_accuracy": None,
        "champion_mae": pytest.approx(sum(pair_errors) / 2),
        "challenger_mae": 50.0,
        "champion_rmse": pytest.approx(math.sqrt(sum(x * x for x in pair_errors) / 2)),
        "challenger_rmse": 50.0,
    }
    shadows = stored_shadow_rows(candidates.data_dir)
    assert [(r["ground_truth"], r["abs_error"]) for r in shadows] == [
        ("150.0", 50.0),
        ("150.0", 50.0),
        (None, None),
    ]


def test_steward_versions_shows_shadow_quality_and_the_paired_comparison(
    candidates: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(candidates)) as client:
        rows = [IRIS_SETOSA, IRIS_SETOSA, IRIS_SETOSA]
        (a, _), (b, _), (c, _) = served(client, "iris", *rows)
        client.app_state["services"].log.append(
            [
                shadow("iris", a, IRIS_SETOSA, "setosa"),
                shadow("iris", b, IRIS_SETOSA, "virginica"),
                shadow("iris", c, IRIS_SETOSA, "setosa"),
            ]
        )
        for prediction_id, truth in ((a, "setosa"), (b, "setosa")):  # c: not labelled
            assert send(client, prediction_id, truth) == (200, "accepted")
    monkeypatch.setenv("STEWARD_DATA_DIR", str(candidates.data_dir))
    code, out, _ = run_cli(capsys, "--models-dir", str(candidates.models_dir), "versions", "iris")
    assert code == 0
    table, paired, traffic, _ = out.split("\n\n")
    assert traffic.startswith("traffic: none")
    cells = [re.split(r"\s{2,}", line) for line in table.splitlines()]  # columns: 2+ spaces
    assert [(row[0], *row[-2:]) for row in cells] == [
        ("VERSION", "LIVE (LABELLED)", "SHADOW (LABELLED)"),
        ("1", "accuracy=1 (2 of 3)", "-"),
        ("2", "- (0 of 0)", "accuracy=0.5 (2 of 3)"),
    ]
    assert paired.splitlines() == [
        "champion vs challenger on the same labels:",
        "CHAMPION  CHALLENGER  LABELLED  CHAMPION LIVE  CHALLENGER LIVE",
        "1         2           2         accuracy=1     accuracy=0.5",
    ]
