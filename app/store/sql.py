"""The prediction store on SQLAlchemy Core: an embedded SQLite file by default.

The schema and queries are portable SQL; only connection set-up differs per dialect, so a
PostgreSQL URL drops in (with its driver installed) behind the same contract tests.
"""

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    make_url,
    select,
    update,
)
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.schema import CreateIndex

from app.errors import StoreUnavailable
from app.store.base import (
    Label,
    PairedCounts,
    PredictionRecord,
    QuarantinedPrediction,
    RowsRefused,
    StoredPrediction,
    StoredShadow,
    VersionCounts,
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

# Indexes added after the first release: create_all makes a table's indexes only with the table,
# so a store created by an older Steward gets these at open, each IF NOT EXISTS. So do those of
# shadow_predictions, a later table: a replica that lost the race to create it (see
# _create_schema) must not depend on the winner having got as far as its indexes.
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


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL + NORMAL: a commit is durable across a process crash and costs no fsync per
    # transaction; readers (feedback) never block the log writer.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _json_text(value: Any) -> str:
    """JSON columns through orjson: the log writer's main cost after the insert itself."""
    return orjson.dumps(value).decode()


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # SQLite keeps no zone; everything stored is UTC


_OUTAGES = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


@contextlib.contextmanager
def _store_errors(
    action: str, refused: type[StoreUnavailable] = StoreUnavailable
) -> Iterator[None]:
    """Database errors as StoreUnavailable; ``refused`` for those that are not an outage
    (connection, lock, disk, resources) but the database refusing what it was given."""
    try:
        yield
    except SQLAlchemyError as exc:
        outage = isinstance(exc, _OUTAGES) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated
        )
        error = StoreUnavailable if outage else refused
        raise error(f"prediction store failed to {action}: {exc.__cause__ or exc}") from exc


def version_counts_query(
    model: str, since: datetime | None, table: Table = predictions
) -> Select[Any]:
    """SqlStore.version_counts' aggregate query over ``table`` (``predictions`` or
    ``shadow_predictions``): bounded by its (model, created_at) index."""
    c = table.c
    query = (
        select(
            c.version,
            func.count().label("predictions"),
            func.count(c.ground_truth).label("labelled"),
            func.count(case((c.correct.is_(True), 1))).label("correct"),
            func.coalesce(func.sum(c.abs_error), 0.0).label("abs_error_sum"),
            func.coalesce(func.sum(c.abs_error * c.abs_error), 0.0).label("squared_error_sum"),
        )
        .where(c.model == model)
        .group_by(c.version)
        .order_by(c.version)
    )
    return _since(query, c.created_at, since)


def paired_counts_query(model: str, since: datetime | None) -> Select[Any]:
    """SqlStore.paired_counts' query: labelled shadow rows of ``model`` in the window joined to
    their labelled served rows, summed per (served version, shadow version)."""
    s, p = shadow_predictions.c, predictions.c
    query = (
        select(
            p.version.label("champion"),
            s.version.label("challenger"),
            func.count().label("labelled"),
            func.count(case((p.correct.is_(True), 1))).label("champion_correct"),
            func.count(case((s.correct.is_(True), 1))).label("challenger_correct"),
            func.coalesce(func.sum(p.abs_error), 0.0).label("champion_abs_error_sum"),
            func.coalesce(func.sum(s.abs_error), 0.0).label("challenger_abs_error_sum"),
            func.coalesce(func.sum(p.abs_error * p.abs_error), 0.0).label(
                "champion_squared_error_sum"
            ),
            func.coalesce(func.sum(s.abs_error * s.abs_error), 0.0).label(
                "challenger_squared_error_sum"
            ),
        )
        .select_from(shadow_predictions.join(predictions, p.id == s.prediction_id))
        .where(s.model == model, s.ground_truth.is_not(None), p.ground_truth.is_not(None))
        .group_by(p.version, s.version)
        .order_by(p.version, s.version)
    )
    return _since(query, s.created_at, since)


def _since(query: Select[Any], created_at: Any, since: datetime | None) -> Select[Any]:
    """``query`` bounded to rows made at or after ``since`` (unbounded when None)."""
    if since is None:
        return query
    # SQLite compares the stored UTC text: the bound must be UTC too.
    return query.where(created_at >= (_utc(since) or since).astimezone(UTC))


class SqlStore:
    """PredictionStore on any SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        with _store_errors("create its schema"):
            _create_schema(engine)
            _create_later_indexes(engine)
            self._insert = _BulkInsert(engine.dialect, _max_parameters(engine))

    def write_predictions(self, records: Sequence[PredictionRecord]) -> None:
        if not records:
            return
        with _store_errors("write predictions", RowsRefused), self._writing() as conn:
            try:
                for sql, params in self._insert.statements(records):
                    conn.exec_driver_sql(sql, params)
            except (TypeError, ValueError, OverflowError) as exc:
                # A value JSON cannot encode (an integer beyond 64 bits, a lone surrogate),
                # found by our encoder (SQLite) or by the driver's (psycopg).
                raise RowsRefused(f"prediction store cannot encode a row: {exc}") from exc

    def get_predictions(self, ids: Collection[str]) -> dict[str, StoredPrediction]:
        if not ids:
            return {}
        query = select(predictions).where(predictions.c.id.in_(list(ids)))
        with _store_errors("read predictions"), self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            shadows: dict[str, list[StoredShadow]] = {}
            if rows:
                s = shadow_predictions.c
                found = [row["id"] for row in rows]
                query = (
                    select(shadow_predictions)
                    .where(s.prediction_id.in_(found))
                    .order_by(s.version, s.id)
                )
                for shadow in conn.execute(query).mappings():
                    shadows.setdefault(shadow["prediction_id"], []).append(_shadow(shadow))
        return {
            row["id"]: StoredPrediction(
                id=row["id"],
                model=row["model"],
                version=row["version"],
                created_at=_utc(row["created_at"]) or row["created_at"],
                inputs=row["inputs"],
                output=row["output"],
                ground_truth=_ground_truth(row["ground_truth"]),
                correct=row["correct"],
                abs_error=row["abs_error"],
                feedback_at=_utc(row["feedback_at"]),
                shadows=tuple(shadows.get(row["id"], ())),
            )
            for row in rows
        }

    def label(self, labels: Sequence[Label]) -> set[str]:
        labelled = set()
        p, s = predictions.c, shadow_predictions.c
        with _store_errors("record feedback"), self._writing() as conn:
            for item in labels:
                result = conn.execute(
                    update(predictions)
                    .where(p.id == item.prediction_id, p.ground_truth.is_(None))
                    .values(**_label_values(item))
                )
                if result.rowcount != 1:
                    continue  # labelled before (or unknown): so are its shadows
                labelled.add(item.prediction_id)
                for shadow in item.shadows:
                    result = conn.execute(
                        update(shadow_predictions)
                        .where(
                            s.id == shadow.prediction_id,
                            s.prediction_id == item.prediction_id,
                            s.ground_truth.is_(None),
                        )
                        .values(**_label_values(shadow))
                    )
                    if result.rowcount == 1:
                        labelled.add(shadow.prediction_id)
        return labelled

    def version_counts(self, model: str, since: datetime | None) -> list[VersionCounts]:
        with _store_errors("read live quality"), self.engine.connect() as conn:
            served = conn.execute(version_counts_query(model, since)).all()
            shadow = conn.execute(version_counts_query(model, since, shadow_predictions)).all()
        counts = [
            VersionCounts(
                version=row.version,
                predictions=row.predictions,
                labelled=row.labelled,
                correct=row.correct,
                abs_error_sum=float(row.abs_error_sum),
                squared_error_sum=float(row.squared_error_sum),
                shadow=is_shadow,
            )
            for rows, is_shadow in ((served, False), (shadow, True))
            for row in rows
        ]
        return sorted(counts, key=lambda c: (c.version, c.shadow))

    def paired_counts(self, model: str, since: datetime | None) -> list[PairedCounts]:
        with _store_errors("read live quality"), self.engine.connect() as conn:
            rows = conn.execute(paired_counts_query(model, since)).all()
        return [
            PairedCounts(
                champion=row.champion,
                challenger=row.challenger,
                labelled=row.labelled,
                champion_correct=row.champion_correct,
                challenger_correct=row.challenger_correct,
                champion_abs_error_sum=float(row.champion_abs_error_sum),
                challenger_abs_error_sum=float(row.challenger_abs_error_sum),
                champion_squared_error_sum=float(row.champion_squared_error_sum),
                challenger_squared_error_sum=float(row.challenger_squared_error_sum),
            )
            for row in rows
        ]

    def quarantine(self, row: QuarantinedPrediction) -> None:
        with _store_errors("quarantine a prediction"), self._writing() as conn:
            conn.execute(
                insert(quarantine).values(
                    id=row.id,
                    model=row.model,
                    version=row.version,
                    created_at=row.created_at,
                    quarantined_at=row.at,
                    reason=row.reason,
                    row_repr=row.row_repr,
                )
            )

    def check_writable(self) -> None:
        """Commit a heartbeat, and insert (then delete) a probe prediction in the same
        transaction: proves the predictions table itself takes rows now, so the log can tell a
        store that is down from one row it refuses."""
        probe = f"probe-{uuid.uuid4().hex}"  # never a prediction id (those are 32 hex digits)
        now = datetime.now(UTC)
        with _store_errors("commit a write"), self._writing() as conn:
            conn.execute(delete(heartbeat))
            conn.execute(insert(heartbeat).values(id=1, at=now))
            conn.execute(
                insert(predictions).values(
                    id=probe, model="_probe", version=0, created_at=now, inputs={}, output={}
                )
            )
            conn.execute(delete(predictions).where(predictions.c.id == probe))

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction. SQLite takes one writer at a time, and one that finds the file
        locked sleeps in its busy handler (up to 100 ms a nap): writers of this process queue
        on a lock instead, and are woken as soon as the one before them commits."""
        with self._write_lock, self.engine.begin() as conn:
            yield conn


class _BulkInsert:
    """The log's INSERTs: served rows into ``predictions``, shadow rows (``shadow_of`` set)
    into ``shadow_predictions``, in the order given and in the caller's one transaction."""

    def __init__(self, dialect: Dialect, max_parameters: int) -> None:
        self.served = _TableInsert(predictions, _SERVED_LAYOUT, dialect, max_parameters)
        self.shadow = _TableInsert(shadow_predictions, _SHADOW_LAYOUT, dialect, max_parameters)

    def statements(self, records: Sequence[PredictionRecord]) -> Iterator[tuple[str, Any]]:
        """(SQL, parameters) pairs that insert ``records``."""
        served = [r for r in records if r.shadow_of is None]
        if served:
            yield from self.served.statements(served)
        if len(served) < len(records):
            shadows = [r for r in records if r.shadow_of is not None]
            yield from self.shadow.statements(shadows)


def _served_row(r: PredictionRecord, created: Any, json_value: Any) -> tuple[Any, ...]:
    return (r.id, r.model, r.version, created, json_value(r.inputs), json_value(r.output))


def _shadow_row(r: PredictionRecord, created: Any, json_value: Any) -> tuple[Any, ...]:
    return (r.id, r.shadow_of, r.model, r.version, created, json_value(r.output))


_SERVED_LAYOUT = (("id", "model", "version", "created_at", "inputs", "output"), _served_row)
_SHADOW_LAYOUT = (("id", "prediction_id", "model", "version", "created_at", "output"), _shadow_row)


class _TableInsert:
    """One table's INSERT, compiled once for the dialect, handed straight to the driver.

    SQLAlchemy's per-row parameter handling costs as much as SQLite's insert itself. Each value
    still goes through its column type's own bind processor for this dialect, so the stored
    row is exactly what Core would store.

    Positional drivers (SQLite) get multi-row ``VALUES`` statements of up to ``MAX_ROWS``
    rows: the driver releases the GIL around each statement, and a writer thread has to win
    it back from a busy event loop each time, a whole switch interval (5 ms). With
    ``executemany`` that is once per row, and the log falls behind at a few thousand rows/s.
    Other drivers get ``executemany``.
    """

    MAX_ROWS = 5000  # 30,000 parameters: under SQLite's default limit (32,766)

    def __init__(
        self,
        table: Table,
        layout: tuple[tuple[str, ...], Callable[[PredictionRecord, Any, Any], tuple[Any, ...]]],
        dialect: Dialect,
        max_parameters: int,
    ) -> None:
        self.columns, self._row = layout
        self.rows_per_statement = max(1, min(self.MAX_ROWS, max_parameters // len(self.columns)))
        compiled = insert(table).compile(dialect=dialect, column_keys=list(self.columns))
        self.sql = str(compiled)
        self.positions: list[int] | None = None
        if compiled.positional:
            self.positions = [self.columns.index(name) for name in compiled.positiontup or ()]
            self._head, self._values = self.sql.rsplit(" VALUES ", 1)
            self._full = self._multi_sql(self.rows_per_statement)
        # Every JSON column of ours has the same type: one bind processor serves them all.
        created, json_value = (
            table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in ("created_at", "output")
        )
        self._created = created or _same
        self._json = json_value or _same

    def statements(self, records: Sequence[PredictionRecord]) -> Iterator[tuple[str, Any]]:
        """(SQL, parameters) pairs that insert ``records``."""
        rows = self._rows(records)
        if self.positions is None:
            yield self.sql, [dict(zip(self.columns, row, strict=True)) for row in rows]
            return
        for start in range(0, len(rows), self.rows_per_statement):
            chunk = rows[start : start + self.rows_per_statement]
            sql = (
                self._full if len(chunk) == self.rows_per_statement else self._multi_sql(len(chunk))
            )
            yield sql, tuple(row[i] for row in chunk for i in self.positions)

    def _multi_sql(self, rows: int) -> str:
        """One statement for ``rows`` rows; only the full size is kept (every size would be
        megabytes of SQL text)."""
        return f"{self._head} VALUES {', '.join([self._values] * rows)}"

    def _rows(self, records: Sequence[PredictionRecord]) -> list[tuple[Any, ...]]:
        """The column values of ``records``, JSON columns included: built here, in the log's
        writer thread, not on the request path."""
        rows = []
        last_time: datetime | None = None
        created: Any = None
        for r in records:
            if r.created_at is not last_time:  # one timestamp for the rows of a request
                last_time, created = r.created_at, self._created(r.created_at)
            rows.append(self._row(r, created, self._json))
        return rows


def _create_schema(engine: Engine) -> None:
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


def _same(value: Any) -> Any:
    return value


def _ground_truth(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _label_values(label: Label) -> dict[str, Any]:
    """The columns a label sets, on a served row or a shadow row."""
    return {
        "ground_truth": json.dumps(label.ground_truth),
        "correct": label.correct,
        "abs_error": label.abs_error,
        "feedback_at": label.at,
    }


def _shadow(row: Any) -> StoredShadow:
    return StoredShadow(
        id=row["id"],
        prediction_id=row["prediction_id"],
        model=row["model"],
        version=row["version"],
        created_at=_utc(row["created_at"]) or row["created_at"],
        output=row["output"],
        ground_truth=_ground_truth(row["ground_truth"]),
        correct=row["correct"],
        abs_error=row["abs_error"],
        feedback_at=_utc(row["feedback_at"]),
    )


def _max_parameters(engine: Engine) -> int:
    """Most bound parameters in one statement: SQLite's compiled limit (999 before 3.32)."""
    if engine.dialect.name != "sqlite":
        return 32766  # only positional (SQLite) statements are built to this size
    connection = engine.raw_connection()
    try:
        getlimit = getattr(connection.dbapi_connection, "getlimit", None)  # Python 3.11+
        limit: int = 999 if getlimit is None else getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return limit
    finally:
        connection.close()


def open_store(url: str) -> SqlStore:
    """Open (creating if needed) the store at a SQLAlchemy URL; StoreUnavailable if it cannot."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # its message would repeat the URL, password included
        raise StoreUnavailable(
            "the store URL is not a SQLAlchemy URL (dialect+driver://user:password@host/database)"
        ) from None
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                _make_folder(Path(parsed.database).parent)
            engine = create_engine(url, json_serializer=_json_text)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, json_serializer=_json_text)
    except (ArgumentError, ImportError) as exc:  # an unknown dialect, a driver not installed
        raise StoreUnavailable(
            f"no usable database driver for {parsed.drivername!r} in the store URL: {exc}"
            + (" (install steward[postgres])" if parsed.get_backend_name() == "postgresql" else "")
        ) from exc
    return SqlStore(engine)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create {folder} for the SQLite store: {exc.strerror}"
        ) from exc
