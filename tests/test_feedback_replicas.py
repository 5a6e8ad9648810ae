"""Feedback for one prediction arriving at two replicas at the same instant: two real `steward
serve` processes on one PostgreSQL database, and exactly one outcome counted fleet-wide.

Predictions are made through replica A and written; then, for every id, one thread posts its
feedback to A and another to B, released together by a barrier. For half the ids both carry the
same ground truth (one ``accepted``, one ``duplicate``), for the other half different ones (one
``accepted``, one 409 ``feedback_conflict``). Which replica wins each race is not asserted; that
exactly one does, in the responses, in both replicas' counters summed and in the store, is.
"""

import json
import os
import threading
from contextlib import ExitStack
from pathlib import Path

import httpx2
import psycopg
from helpers import (
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    metric,
    metric_sum,
    postgres_database,
    postgres_dsn,
    postgres_url,
    wait_until,
)
from server import STEWARD, free_port, serving

ROWS = 200  # predictions, each raced for
ROWS_A_REQUEST = 10
PAIRS = 8  # pairs of racing threads (one to A, one to B each)
CLASSES = ("setosa", "virginica")


def test_feedback_for_one_id_at_two_replicas_at_once_is_counted_once(
    tmp_path: Path, models_dir: Path
) -> None:
    with postgres_database("steward_replicas") as database, ExitStack() as stack:
        env = os.environ | {
            "STEWARD_MODELS_DIR": str(models_dir),
            "STEWARD_DATABASE_URL": postgres_url(database),
            "STEWARD_REQUIRED_MODELS": "iris",
        }
        replicas = []
        for name in ("a", "b"):
            port = free_port()
            argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
            replica_env = env | {"STEWARD_DATA_DIR": str(tmp_path / f"data-{name}")}
            log = tmp_path / f"replica-{name}.log"
            server = stack.enter_context(
                serving(argv, port=port, env=replica_env, log=log, ready="/readyz")
            )
            replicas.append(stack.enter_context(httpx2.Client(base_url=server.url, timeout=60)))
        a = replicas[0]

        predicted: dict[str, str] = {}  # id -> the class A predicted
        for n in range(ROWS // ROWS_A_REQUEST):
            rows = [IRIS_SETOSA if (n + i) % 2 else IRIS_VIRGINICA for i in range(ROWS_A_REQUEST)]
            answer = a.post("/predict/iris", json={"instances": rows})
            assert answer.status_code == 200, answer.text
            predicted |= {p["id"]: p["prediction"] for p in answer.json()["predictions"]}
        assert sorted(set(predicted.values())) == list(CLASSES)
        assert wait_until(lambda: metric(a, "steward_prediction_log_pending_rows") == 0)

        ids = list(predicted)
        # Even ids: the same truth at both. Odd ids: A says one class, B the other.
        sent = {
            i: (CLASSES[n % 2], CLASSES[n % 2] if n % 4 < 2 else CLASSES[(n + 1) % 2])
            for n, i in enumerate(ids)
        }
        same = {i for i, (at_a, at_b) in sent.items() if at_a == at_b}
        assert len(same) == ROWS // 2
        answers: dict[tuple[str, int], httpx2.Response] = {}

        def race(pair: int, side: int, barrier: threading.Barrier) -> None:
            with httpx2.Client(base_url=str(replicas[side].base_url), timeout=60) as http:
                http.get("/healthz")  # connected before the first race
                for i in ids[pair::PAIRS]:
                    barrier.wait(timeout=60)
                    body = {"prediction_id": i, "ground_truth": sent[i][side]}
                    answers[i, side] = http.post("/feedback", json=body)

        threads = []
        for pair in range(PAIRS):
            barrier = threading.Barrier(2)
            threads += [threading.Thread(target=race, args=(pair, s, barrier)) for s in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert len(answers) == 2 * ROWS

        accepted_truth: dict[str, str] = {}
        won_at_b = 0
        for i in ids:
            results = [answers[i, side] for side in (0, 1)]
            statuses = sorted(
                r.json()["status"] if r.status_code == 200 else r.json()["error"]["code"]
                for r in results
            )
            assert statuses == (
                ["accepted", "duplicate"] if i in same else ["accepted", "feedback_conflict"]
            ), (i, [r.text for r in results])
            winner = next(side for side in (0, 1) if results[side].status_code == 200)
            if i not in same:
                assert results[1 - winner].status_code == 409
            accepted_truth[i] = sent[i][winner]
            won_at_b += winner == 1
        print(f"\n{ROWS} races (predictions made at A); {won_at_b} won at B")

        def fleet(name: str, **labels: str) -> float:
            return sum(metric_sum(r, name, model="iris", **labels) for r in replicas)

        correct = sum(accepted_truth[i] == predicted[i] for i in ids)
        assert fleet("steward_feedback_total", outcome="correct") == correct
        assert fleet("steward_feedback_total", outcome="incorrect") == ROWS - correct
        assert fleet("steward_feedback_total", outcome="duplicate") == ROWS // 2
        assert fleet("steward_feedback_total", outcome="conflict") == ROWS // 2
        assert fleet("steward_feedback_confusion_total") == ROWS
        assert fleet("steward_feedback_confusion_total", correct="true") == correct

        stored = stored_labels(database)
        assert stored == {i: (accepted_truth[i], accepted_truth[i] == predicted[i]) for i in ids}


def stored_labels(database: str) -> dict[str, tuple[str, bool]]:
    """Each stored prediction's ground truth and whether it was judged correct."""
    with psycopg.connect(postgres_dsn(database)) as conn:
        rows = conn.execute("SELECT id, ground_truth, correct FROM predictions").fetchall()
    return {row[0]: (json.loads(row[1]), row[2]) for row in rows}
