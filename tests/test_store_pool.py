"""The PostgreSQL store's connection pool (app/store/pool.py): sized by settings, bad sizes
refused in one line, and a real server on a pool of one connection under concurrent /predict
and /feedback answering every request, with one connection to the database."""

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psycopg
import pytest
from helpers import (
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    metric,
    metric_sum,
    postgres_admin,
    postgres_database,
    postgres_dsn,
    postgres_url,
    wait_until,
)
from server import STEWARD, Server, free_port, serving

from app.errors import RETRY_AFTER_SECONDS, StoreUnavailable
from app.settings import Settings
from app.store import PoolOptions, open_store

CLIENTS = 8
ROUNDS = 20  # predictions (each followed by its feedback) per client


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_database("steward_pool") as name:
        yield name


# --- settings -------------------------------------------------------------------------------


def test_pool_options_come_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        models_dir=tmp_path,
        database_pool_size=3,
        database_pool_max_overflow=0,
        database_pool_timeout_seconds=0.25,
    )
    assert PoolOptions.of(settings) == PoolOptions(3, 0, 0.25)
    assert PoolOptions.of(Settings(models_dir=tmp_path)) == PoolOptions(5, 5, 10.0)


# --- the pool of a store --------------------------------------------------------------------


def test_a_call_that_waits_past_the_pool_timeout_is_an_outage(database: str) -> None:
    store = open_store(postgres_url(database), PoolOptions(1, 0, 0.2))
    try:
        with store.engine.connect():  # the pool's one connection, held
            with pytest.raises(StoreUnavailable) as waited:
                store.get_predictions(["a" * 32])
            assert "every pooled connection stayed busy" in str(waited.value)
            assert "QueuePool" not in str(waited.value)
        assert store.get_predictions(["a" * 32]) == {}  # returned: the next call has it
    finally:
        store.close()


def test_the_pool_settings_leave_a_sqlite_store_as_it_was(tmp_path: Path) -> None:
    """A file has no server connection limit to share among replicas, and its writers queue on
    the store's lock: SQLAlchemy's defaults stay (5 connections, 30 s)."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", PoolOptions(1, 0, 0.2))
    try:
        assert (store.engine.pool.size(), store.engine.pool.timeout()) == (5, 30.0)  # type: ignore[attr-defined]
    finally:
        store.close()


# --- a real server on a pool of one ---------------------------------------------------------


def environment(tmp_path: Path, models_dir: Path, database: str, **env: str) -> dict[str, str]:
    return os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        "STEWARD_DATABASE_URL": postgres_url(database),
        "STEWARD_DATABASE_POOL_SIZE": "1",
        "STEWARD_DATABASE_POOL_MAX_OVERFLOW": "0",
        "STEWARD_REQUIRED_MODELS": "iris",
        **env,
    }


def connections(database: str) -> int:
    """Backends connected to ``database`` now (the test's own connection is to another)."""
    with postgres_admin() as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_server_on_one_connection_answers_concurrent_predictions_and_feedback(
    tmp_path: Path, models_dir: Path, database: str
) -> None:
    """The log writer and every feedback request take turns on the pool's one connection:
    nothing waits for a second one, so nothing deadlocks and no request fails. Migrations ran
    on connections of their own, closed before the server answered."""
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    env = environment(tmp_path, models_dir, database)
    statuses: list[tuple[int, int, str]] = []  # (predict, feedback status, feedback outcome)
    predicted: list[str] = []
    seen: list[int] = []
    done = threading.Event()

    with serving(argv, port=port, env=env, log=tmp_path / "server.log", ready="/readyz") as srv:

        def client(number: int) -> None:
            with httpx2.Client(base_url=srv.url, timeout=60) as http:
                for n in range(ROUNDS):
                    row = IRIS_SETOSA if (number + n) % 2 else IRIS_VIRGINICA
                    answer = http.post("/predict/iris", json={"instances": [row]})
                    if answer.status_code != 200:
                        statuses.append((answer.status_code, 0, ""))
                        continue
                    (prediction,) = answer.json()["predictions"]
                    predicted.append(prediction["prediction"])
                    feedback = http.post(
                        "/feedback",
                        json={"prediction_id": prediction["id"], "ground_truth": "setosa"},
                    )
                    statuses.append((200, feedback.status_code, feedback.json().get("status")))

        def sample() -> None:
            while not done.wait(0.05):
                seen.append(connections(database))

        sampler = threading.Thread(target=sample)
        sampler.start()
        clients = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=300)
        done.set()
        sampler.join(timeout=30)

        assert statuses == [(200, 200, "accepted")] * (CLIENTS * ROUNDS)
        with httpx2.Client(base_url=srv.url, timeout=30) as http:
            correct = metric(
                http, "steward_feedback_total", model="iris", version="1", outcome="correct"
            )
            incorrect = metric(
                http, "steward_feedback_total", model="iris", version="1", outcome="incorrect"
            )
            assert (correct, incorrect) == (
                predicted.count("setosa"),
                CLIENTS * ROUNDS - predicted.count("setosa"),
            )
            assert metric_sum(http, "steward_errors_total") == 0
        assert max(seen, default=0) == 1, seen
        assert connections(database) == 1
    print(f"\n{CLIENTS * ROUNDS} predictions + feedback on one connection; {len(seen)} samples")


def test_feedback_waiting_past_the_pool_timeout_gets_503_and_then_recovers(
    tmp_path: Path, models_dir: Path, database: str
) -> None:
    """The one connection is the log writer's, its INSERT waiting on a table lock taken from
    outside: feedback waits STEWARD_DATABASE_POOL_TIMEOUT_SECONDS for it, then answers 503
    store_unavailable; once the lock goes, the same feedback is accepted."""
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    env = environment(tmp_path, models_dir, database, STEWARD_DATABASE_POOL_TIMEOUT_SECONDS="0.5")
    server = Server(argv, port=port, env=env, log=tmp_path / "server.log")
    try:
        server.wait_ready("/readyz")
        with httpx2.Client(base_url=server.url, timeout=60) as http, postgres_admin() as admin:
            answer = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
            written = answer.json()["predictions"][0]["id"]
            assert wait_until(lambda: metric(http, "steward_prediction_log_pending_rows") == 0)

            with psycopg.connect(postgres_dsn(database)) as locker:
                locker.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
                assert (
                    http.post("/predict/iris", json={"instances": [IRIS_SETOSA]}).status_code == 200
                )

                def writer_waits() -> bool:
                    row = admin.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                        "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT%%'",
                        (database,),
                    ).fetchone()
                    return row is not None and row[0] == 1

                assert wait_until(writer_waits, seconds=30)
                feedback = {"prediction_id": written, "ground_truth": "setosa"}
                refused = http.post("/feedback", json=feedback)
                assert refused.status_code == 503, refused.text
                assert refused.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
                error = refused.json()["error"]
                assert error["code"] == "store_unavailable"
                assert error["message"] == (
                    "prediction store failed to read predictions: every pooled connection "
                    "stayed busy for STEWARD_DATABASE_POOL_TIMEOUT_SECONDS "
                    "(STEWARD_DATABASE_POOL_SIZE + STEWARD_DATABASE_POOL_MAX_OVERFLOW connections)"
                )
                locker.rollback()
            assert http.post("/feedback", json=feedback).json()["status"] == "accepted"
            assert wait_until(lambda: metric(http, "steward_prediction_log_pending_rows") == 0)
            assert metric(http, "steward_prediction_log_dropped_rows_total") == 0
    finally:
        assert server.stop() == 0
