"""The prediction store's tables, and their creation at open: new stores and older ones alike.

Everything stored is UTC; SQLite keeps no time zone, so what it gives back is made UTC again
(``as_utc``).
"""

from datetime import UTC, datetime

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
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.schema import CreateIndex

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
    # Live quality (version_counts): one model's rows in a time window, whatever the version.
    Index("ix_predictions_model_created_at", "model", "created_at"),
)

# Indexes added after the first release: create_all makes a table's indexes only with the table,
# so a store created by an older Steward gets these at open, each IF NOT EXISTS. So do those of
# shadow_predictions, a later table: a replica that lost the race to create it (see
# create_schema) must not depend on the winner having got as far as its indexes.
LATER_INDEXES = (
    "ix_predictions_model_created_at",
    "ix_shadow_predictions_prediction_id",
    "ix_shadow_predictions_model_created_at",
)

# Shadow predictions: what another version (the candidate) predicted for a served row, never
# returned. Their inputs are the served row's (``prediction_id``), not stored again. A table of
# their own, so that whatever reads ``predictions`` (retraining, audits) sees only served rows.
shadow_predictions = Table(
    "shadow_predictions",
    schema,
    Column("id", String(64), primary_key=True),
    Column("prediction_id", String(64), nullable=False),
    Column("model", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("output", JSON, nullable=False),
    Column("ground_truth", Text, nullable=True),  # JSON text, as in predictions
    Column("correct", Boolean, nullable=True),
    Column("abs_error", Float, nullable=True),
    Column("feedback_at", DateTime(timezone=True), nullable=True),
    # Feedback: the shadows of the served rows it labels.
    Index("ix_shadow_predictions_prediction_id", "prediction_id"),
    # Live quality: one model's shadow rows in a time window.
    Index("ix_shadow_predictions_model_created_at", "model", "created_at"),
)

# Rows the store refused (one bad row never blocks the log): kept for an operator, as text. Loose
# types on purpose: whatever made the row unstorable must not make its quarantine fail too.
quarantine = Table(
    "prediction_quarantine",
    schema,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("version", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=True),
    Column("quarantined_at", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=False),
    Column("row_repr", Text, nullable=False),
)

heartbeat = Table(
    "store_heartbeat",
    schema,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)


def create_schema(engine: Engine) -> None:
    """Create the tables a store lacks (all of them for a new one; those added since for a
    store made by an older Steward).

    Safe when several replicas (or processes on one SQLite file) start at once: the loser of a
    race to create the same table ("already exists", or on PostgreSQL a unique violation in its
    catalog) tries once more, and finds it made. An outage fails the second try too.
    """
    try:
        schema.create_all(engine)
    except (IntegrityError, ProgrammingError, OperationalError):
        schema.create_all(engine)
    _create_later_indexes(engine)


def _create_later_indexes(engine: Engine) -> None:
    """Create the indexes of LATER_INDEXES that a store opened by an older Steward lacks.

    Safe when several replicas start at once: IF NOT EXISTS, and on PostgreSQL the loser of a
    race to create the same index (a unique violation in its catalog) finds it made.
    """
    for index in (*predictions.indexes, *shadow_predictions.indexes):
        if index.name not in LATER_INDEXES:
            continue
        try:
            with engine.begin() as conn:
                conn.execute(CreateIndex(index, if_not_exists=True))
        except (IntegrityError, OperationalError):
            with engine.begin() as conn:
                conn.execute(CreateIndex(index, if_not_exists=True))


def as_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # SQLite keeps no zone; everything stored is UTC
