"""The prediction store's tables (created and upgraded at open by app/store/migrations.py).

Everything stored is UTC; SQLite keeps no time zone, so what it gives back is made UTC again
(``as_utc``).
"""

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

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

# Indexes added after the first release, before schema versions: create_all makes a table's
# indexes only with the table, so the baseline migration creates these IF NOT EXISTS for a store
# an older Steward created.
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


def as_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # SQLite keeps no zone; everything stored is UTC
