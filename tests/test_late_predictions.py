"""Feedback for a prediction another replica still holds in its buffer, through real
`steward serve` processes on one PostgreSQL database (app/late_predictions.py).

Replica A writes its rows only every 3 s (STEWARD_LOG_FLUSH_INTERVAL_SECONDS); B looks for a
young missing id for 5 s after its issue; C does not wait at all; D serves 8 requests at once
and waits 15 s. E is one process on its own SQLite file, where nobody else can hold a row.
"""

import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg
import pytest
from helpers import (
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    assert_error,
    postgres_database,
    postgres_dsn,
    postgres_url,
    wait_until,
)
from server import STEWARD, free_port, serving
from sqlalchemy import event

from app.ids import issued_at, new_ids
from app.late_predictions import CLOCK_SKEW_SECONDS, MAX_IDS, LateRows, young
from app.settings import Settings
from app.store import open_store
from app.training import train_demo

FLUSH = 3.0  # A's flush interval: its rows stay in its buffer this long
WAIT = 8.0  # B's STEWARD_FEEDBACK_PENDING_WAIT_SECONDS: A's flush comes in time, under load too
SLOTS = 8  # D's STEWARD_MAX_CONCURRENCY: one feedback request of D waits at a time (8 // 8)
LONG_WAIT = 15.0  # D's STEWARD_FEEDBACK_PENDING_WAIT_SECONDS


@dataclass
class Replicas:
    a: httpx2.Client
    b: httpx2.Client
    c: httpx2.Client
    d: httpx2.Client
    e: httpx2.Client
    database: str

    def stored(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are in the shared store now."""
        with psycopg.connect(postgres_dsn(self.database)) as conn:
            rows = conn.execute("SELECT id FROM predictions WHERE id = ANY(%s)", (ids,))
            return {row[0] for row in rows}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    work = tmp_path_factory.mktemp("replicas")
    train_demo(work / "models")
    with postgres_database("steward_late") as database, ExitStack() as running:
        clients = []
        for name, extra in (
            ("a", {"STEWARD_LOG_FLUSH_INTERVAL_SECONDS": str(FLUSH)}),
            ("b", {"STEWARD_FEEDBACK_PENDING_WAIT_SECONDS": str(WAIT)}),
            ("c", {"STEWARD_FEEDBACK_PENDING_WAIT_SECONDS": "0"}),
            (
                "d",
                {
                    "STEWARD_MAX_CONCURRENCY": str(SLOTS),
                    "STEWARD_FEEDBACK_PENDING_WAIT_SECONDS": str(LONG_WAIT),
                },
            ),
            ("e", {"STEWARD_FEEDBACK_PENDING_WAIT_SECONDS": str(WAIT)}),
        ):
            env = os.environ | {
                "STEWARD_MODELS_DIR": str(work / "models"),
                "STEWARD_DATA_DIR": str(work / f"data-{name}"),
                **extra,
            }
            env.pop("STEWARD_DATABASE_URL", None)
            if name != "e":  # E: its own SQLite file in its data folder
                env["STEWARD_DATABASE_URL"] = postgres_url(database)
            port = free_port()
            server = running.enter_context(
                serving(
                    [STEWARD, "serve", "--port", str(port)],
                    port=port,
                    env=env,
                    log=work / f"{name}.log",
                    ready="/readyz",
                )
            )
            clients.append(running.enter_context(httpx2.Client(base_url=server.url, timeout=60)))
        a, b, c, d, e = clients
        yield Replicas(a, b, c, d, e, database)


def predicted(http: httpx2.Client, *rows: dict[str, float]) -> list[dict[str, Any]]:
    response = http.post("/predict/iris", json={"instances": list(rows)})
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


def id_issued(at: float) -> str:
    """A well-formed id of ours (UUIDv7) issued at Unix time ``at``: one nobody predicted."""
    return f"{int(at * 1000):012x}7{uuid.uuid4().hex[:3]}8{uuid.uuid4().hex[:15]}"


def test_young_ids_wait_until_their_issue_time_plus_the_wait() -> None:
    now = 1_800_000_000.0
    just = id_issued(now)
    edge_past = id_issued(now - WAIT + 0.001)  # the last millisecond still young
    too_old = id_issued(now - WAIT)
    edge_future = id_issued(now + CLOCK_SKEW_SECONDS)
    too_far = id_issued(now + CLOCK_SKEW_SECONDS + 0.001)
    foreign = uuid.uuid4().hex
    ends = young([just, edge_past, too_old, edge_future, too_far, foreign], WAIT, now)
    assert ends == {
        just: now + WAIT,
        edge_past: now + 0.001,
        edge_future: now + CLOCK_SKEW_SECONDS + WAIT,
    }
    assert young([just], 0.0, now) == {}


def test_feedback_reaches_another_replica_before_its_row_is_written(replicas: Replicas) -> None:
    (first,) = predicted(replicas.a, IRIS_SETOSA)
    (second,) = predicted(replicas.a, IRIS_SETOSA)
    assert replicas.stored([first["id"], second["id"]]) == set()  # still in A's buffer
    accepted = replicas.b.post(
        "/feedback", json={"prediction_id": first["id"], "ground_truth": "setosa"}
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {
        "prediction_id": first["id"],
        "status": "accepted",
        "model": "iris",
        "version": 1,
    }
    # The other accepted id forms name the same pending prediction.
    dashed = str(uuid.UUID(second["id"])).upper()
    other_form = replicas.b.post(
        "/feedback", json={"prediction_id": dashed, "ground_truth": "virginica"}
    )
    assert other_form.status_code == 200, other_form.text
    assert other_form.json()["status"] == "accepted"
    again = replicas.a.post(
        "/feedback", json={"prediction_id": first["id"], "ground_truth": "setosa"}
    )
    assert again.json()["status"] == "duplicate"  # labelled once, whichever replica is asked


def test_a_batch_waits_once_for_all_its_young_missing_ids(replicas: Replicas) -> None:
    rows = predicted(replicas.a, IRIS_SETOSA, IRIS_VIRGINICA, IRIS_SETOSA, IRIS_VIRGINICA)
    ids = [row["id"] for row in rows]
    assert [row["prediction"] for row in rows] == ["setosa", "virginica"] * 2
    old = id_issued(time.time() - 3600)  # unknown, and too old to wait for
    assert replicas.stored(ids) == set()
    items = [{"prediction_id": i, "ground_truth": "setosa"} for i in [*ids, old]]
    response = replicas.b.post("/feedback", json={"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["duplicate"], body["failed"]) == (4, 0, 1)
    assert [r["status"] for r in body["results"]] == ["accepted"] * 4 + ["error"]
    assert [r["prediction_id"] for r in body["results"]] == [*ids, old]
    assert body["results"][4]["error"]["code"] == "unknown_prediction"
    assert replicas.stored(ids) == set(ids)


def test_a_young_id_nobody_issued_is_unknown_once_its_wait_has_passed(
    replicas: Replicas,
) -> None:
    (forged,) = new_ids(1)
    issued = issued_at(forged)
    assert issued is not None
    response = replicas.b.post(
        "/feedback", json={"prediction_id": forged, "ground_truth": "setosa"}
    )
    answered = time.time()
    assert_error(response, 404, "unknown_prediction")
    assert answered - issued >= WAIT  # it was looked for until its wait ended
    assert replicas.b.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    "unknown",
    [
        pytest.param(lambda: id_issued(time.time() - 3600), id="an-hour-old"),
        pytest.param(lambda: id_issued(time.time() - 2 * WAIT), id="older-than-the-wait"),
        pytest.param(lambda: id_issued(time.time() + 3600), id="an-hour-ahead"),
        pytest.param(lambda: uuid.uuid4().hex, id="uuid4-no-timestamp"),
        pytest.param(lambda: "0" * 32, id="zeros"),
        pytest.param(lambda: "f" * 32, id="ones"),
    ],
)
def test_an_id_that_is_not_young_is_unknown_without_waiting(
    replicas: Replicas, unknown: Any
) -> None:
    started = time.monotonic()
    response = replicas.b.post(
        "/feedback", json={"prediction_id": unknown(), "ground_truth": "setosa"}
    )
    took = time.monotonic() - started
    assert_error(response, 404, "unknown_prediction")
    assert took < WAIT  # behaviour, not speed: a young id could not be answered before WAIT


def test_without_the_wait_a_row_another_replica_holds_is_unknown(replicas: Replicas) -> None:
    (row,) = predicted(replicas.a, IRIS_SETOSA)
    item = {"prediction_id": row["id"], "ground_truth": "setosa"}
    assert replicas.stored([row["id"]]) == set()
    assert_error(replicas.c.post("/feedback", json=item), 404, "unknown_prediction")
    # ... and is accepted by the same replica once A has written it.
    assert wait_until(lambda: replicas.stored([row["id"]]) == {row["id"]}, seconds=30)
    accepted = replicas.c.post("/feedback", json=item)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted"


def test_few_feedback_requests_wait_at_once_so_predict_keeps_its_slots(
    replicas: Replicas,
) -> None:
    """D takes 8 requests at once; 8 forged feedback requests arrive together: one waits, the
    other 7 are 404 at once, so /predict is still served, and one more is 404 at once too."""
    ahead = time.time() + CLOCK_SKEW_SECONDS / 2  # young for LONG_WAIT + 0.5 s from now

    def send(prediction_id: str) -> httpx2.Response:
        with httpx2.Client(base_url=replicas.d.base_url, timeout=120) as client:
            item = {"prediction_id": prediction_id, "ground_truth": "setosa"}
            return client.post("/feedback", json=item)

    with ThreadPoolExecutor(SLOTS) as pool:
        sent: list[Future[httpx2.Response]] = [
            pool.submit(send, id_issued(ahead)) for _ in range(SLOTS)
        ]
        # Without the bound all 8 would wait LONG_WAIT, holding every slot.
        assert wait_until(lambda: sum(f.done() for f in sent) == SLOTS - 1, seconds=LONG_WAIT)
        (waiting,) = [f for f in sent if not f.done()]
        for answered in (f for f in sent if f is not waiting):
            assert_error(answered.result(), 404, "unknown_prediction")
        (row,) = predicted(replicas.d, IRIS_SETOSA)
        assert row["prediction"] == "setosa"
        started = time.monotonic()
        extra = send(id_issued(ahead))
        took = time.monotonic() - started
        assert_error(extra, 404, "unknown_prediction")
        assert took < LONG_WAIT  # behaviour, not speed: it did not wait with the other one
        assert not waiting.done()  # the bound was still reached meanwhile
        assert_error(waiting.result(), 404, "unknown_prediction")
    # Once it has stopped waiting, the next young id waits again (the slot was given back).
    (forged,) = new_ids(1)
    issued = issued_at(forged)
    assert issued is not None
    assert_error(send(forged), 404, "unknown_prediction")
    assert time.time() - issued >= LONG_WAIT


def test_one_process_on_its_own_sqlite_file_does_not_wait(replicas: Replicas) -> None:
    """No other process can hold a row of E's store, and its own buffer is flushed before the
    lookup: a young unknown id is unknown at once."""
    (forged,) = new_ids(1)
    started = time.monotonic()
    response = replicas.e.post(
        "/feedback", json={"prediction_id": forged, "ground_truth": "setosa"}
    )
    took = time.monotonic() - started
    assert_error(response, 404, "unknown_prediction")
    assert took < WAIT  # behaviour, not speed: a young id waits WAIT where the wait applies
    (row,) = predicted(replicas.e, IRIS_VIRGINICA)  # its own fresh row is found at once
    accepted = replicas.e.post(
        "/feedback", json={"prediction_id": row["id"], "ground_truth": "virginica"}
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted"


@pytest.mark.parametrize(
    ("settings", "wait"),
    [
        pytest.param({}, 0.0, id="one-process-sqlite"),
        pytest.param({"workers": 2}, 2.0, id="workers"),
        pytest.param({"database_url": "postgresql+psycopg://h/db"}, 2.0, id="database-url"),
        pytest.param({"workers": 2, "feedback_pending_wait_seconds": 0}, 0.0, id="off"),
    ],
)
def test_the_wait_applies_only_where_another_process_can_hold_the_row(
    tmp_path: Path, settings: dict[str, Any], wait: float
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'steward.db'}")
    try:
        defaults = {"workers": 1, "database_url": None, "feedback_pending_wait_seconds": 2.0}
        configured = Settings(**(defaults | settings | {"max_concurrency": 64}))
        late = LateRows.for_settings(store, configured)
        assert (late.wait, late.max_waiting) == (wait, 64 // 8)
    finally:
        store.close()


def test_a_long_wait_makes_a_handful_of_lookups_of_the_first_young_ids(tmp_path: Path) -> None:
    """1,000 forged young ids in one request: the first MAX_IDS are looked up, with intervals
    doubling from 0.05 s to 0.5 s, so a 2 s wait makes at most 7 lookups (0.05 s polling: 40)."""
    store = open_store(f"sqlite:///{tmp_path / 'steward.db'}")
    lookups: list[set[str]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM predictions" in statement:
            lookups.append(set(parameters))

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        ids = new_ids(1000)
        late = LateRows(store, wait=2.0, shared=True, max_waiting=1)
        assert anyio.run(late.arrived, ids) == set()
        assert 1 <= len(lookups) <= 7, len(lookups)
        assert all(looked == set(ids[:MAX_IDS]) for looked in lookups)
        assert late.waiting == 0
    finally:
        store.close()
