"""The prediction store on SQLAlchemy Core: an embedded SQLite file by default.

The schema and queries are portable SQL; only connection set-up differs per dialect, so a
PostgreSQL URL drops in (with its driver installed) behind the same contract tests.
"""

import contextlib
import json
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    make_url,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from app.errors import StoreUnavailable
from app.store.base import Label, PredictionRecord, StoredPrediction

schema = MetaData()

predictions = Table(
    "predictions",
    schema,
    Column("id", String(64), primary_key=True),
    Column("model", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("output", JSON, nullable=False),
    # JSON text, not a JSON column: SQLite gives "JSON" numeric affinity and would turn the
    # label 100.5 into a REAL that no longer decodes as JSON.
    Column("ground_truth", Text, nullable=True),
    Column("correct", Boolean, nullable=True),
    Column("abs_error", Float, nullable=True),
    Column("feedback_at", DateTime(timezone=True), nullable=True),
    Index("ix_predictions_model_version_created_at", "model", "version", "created_at"),
)

heartbeat = Table(
    "store_heartbeat",
    schema,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL + NORMAL: a commit is durable across a process crash and costs no fsync per
    # transaction; readers (feedback) never block the log writer.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # SQLite keeps no zone; everything stored is UTC


@contextlib.contextmanager
def _store_errors(action: str) -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreUnavailable(
            f"prediction store failed to {action}: {exc.__cause__ or exc}"
        ) from exc


class SqlStore:
    """PredictionStore on any SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with _store_errors("create its schema"):
            schema.create_all(engine)

    def write_predictions(self, records: Sequence[PredictionRecord]) -> None:
        if not records:
            return
        rows = [
            {
                "id": r.id,
                "model": r.model,
                "version": r.version,
                "created_at": r.created_at,
                "inputs": r.inputs,
                "output": r.output,
            }
            for r in records
        ]
        with _store_errors("write predictions"), self.engine.begin() as conn:
            conn.execute(insert(predictions), rows)

    def get_predictions(self, ids: Collection[str]) -> dict[str, StoredPrediction]:
        if not ids:
            return {}
        query = select(predictions).where(predictions.c.id.in_(list(ids)))
        with _store_errors("read predictions"), self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return {
            row["id"]: StoredPrediction(
                id=row["id"],
                model=row["model"],
                version=row["version"],
                created_at=_utc(row["created_at"]) or row["created_at"],
                inputs=row["inputs"],
                output=row["output"],
                ground_truth=None
                if row["ground_truth"] is None
                else json.loads(row["ground_truth"]),
                correct=row["correct"],
                abs_error=row["abs_error"],
                feedback_at=_utc(row["feedback_at"]),
            )
            for row in rows
        }

    def label(self, labels: Sequence[Label]) -> set[str]:
        labelled = set()
        with _store_errors("record feedback"), self.engine.begin() as conn:
            for item in labels:
                result = conn.execute(
                    update(predictions)
                    .where(
                        predictions.c.id == item.prediction_id,
                        predictions.c.ground_truth.is_(None),
                    )
                    .values(
                        ground_truth=json.dumps(item.ground_truth),
                        correct=item.correct,
                        abs_error=item.abs_error,
                        feedback_at=item.at,
                    )
                )
                if result.rowcount == 1:
                    labelled.add(item.prediction_id)
        return labelled

    def check_writable(self) -> None:
        with _store_errors("commit a write"), self.engine.begin() as conn:
            conn.execute(delete(heartbeat))
            conn.execute(insert(heartbeat).values(id=1, at=datetime.now(UTC)))

    def close(self) -> None:
        self.engine.dispose()


def open_store(url: str) -> SqlStore:
    """Open (creating if needed) the store at a SQLAlchemy URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return SqlStore(engine)
