"""The prediction store on SQLAlchemy Core: an embedded SQLite file by default.

The tables (schema.py), the live-quality queries (queries.py) and the log's INSERTs (bulk.py) are
portable SQL; only connection set-up differs per dialect, so a PostgreSQL URL drops in (with its
driver, psycopg 3, installed; its connection pool sized by settings, pool.py) behind the same
contract tests.
"""

import contextlib
import json
import threading
import uuid
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    insert,
    make_url,
    select,
    update,
)
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import StoreUnavailable
from app.settings import Settings
from app.store.base import (
    Label,
    LabelledRow,
    PairedCounts,
    PredictionRecord,
    QuarantinedPrediction,
    RowsRefused,
    StoredPrediction,
    StoredShadow,
    VersionCounts,
)
from app.store.bulk import BulkInsert
from app.store.migrations import migrate
from app.store.pool import PoolOptions
from app.store.queries import labelled_rows_query, paired_counts_query, version_counts_query
from app.store.schema import (
    as_utc,
    heartbeat,
    predictions,
    quarantine,
    shadow_predictions,
)
from app.store.sqlite_file import SqliteFile


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


DEFAULT_POOL = PoolOptions()
# PostgreSQL refusing every write, whatever it is given: a read-only transaction (a hot standby
# after a failover, default_transaction_read_only). psycopg files it under InternalError.
_READ_ONLY = frozenset({"25006"})
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
            isinstance(exc, DBAPIError)
            and (exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) in _READ_ONLY)
        )
        error = StoreUnavailable if outage else refused
        raise error(f"prediction store failed to {action}: {_reason(exc)}") from exc


def _reason(exc: SQLAlchemyError) -> str:
    """What went wrong, in the driver's words; a pool timeout in ours (SQLAlchemy's names its
    pool class and links its own docs, which tell a client of the API nothing)."""
    if isinstance(exc, PoolTimeout):
        return (
            "every pooled connection stayed busy for STEWARD_DATABASE_POOL_TIMEOUT_SECONDS "
            "(STEWARD_DATABASE_POOL_SIZE + STEWARD_DATABASE_POOL_MAX_OVERFLOW connections)"
        )
    return str(exc.__cause__ or exc)


class SqlStore:
    """PredictionStore on any SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        try:
            with _store_errors("create its schema"):
                migrate(engine)
                self._insert = BulkInsert(engine)
        except StoreUnavailable:
            engine.dispose()  # a store refused at open leaves no connection behind
            raise
        # A file on disk is watched: writes into one removed while serving would be lost. (Not
        # a URI filename: ``file:...?mode=ro`` and the like are opened as the URI says.)
        database = engine.url.database
        self._file = (
            SqliteFile(Path(database))
            if engine.dialect.name == "sqlite"
            and database
            and database != ":memory:"
            and not engine.url.query.get("uri")
            else None
        )
        if self._file is not None:
            event.listen(engine, "do_connect", self._file.open_existing)

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
                created_at=as_utc(row["created_at"]) or row["created_at"],
                inputs=row["inputs"],
                output=row["output"],
                ground_truth=_ground_truth(row["ground_truth"]),
                correct=row["correct"],
                abs_error=row["abs_error"],
                feedback_at=as_utc(row["feedback_at"]),
                shadows=tuple(shadows.get(row["id"], ())),
            )
            for row in rows
        }

    def label(self, labels: Sequence[Label]) -> set[str]:
        """Label each prediction not labelled yet; the ids labelled now.

        Safe across replicas as it is, under PostgreSQL's READ COMMITTED: the UPDATE's
        ``ground_truth IS NULL`` is checked again on the newest version of the row once its row
        lock is had, so of two replicas labelling one row at once the second waits for the
        first to commit, then finds it labelled and changes nothing (rowcount 0: the feedback
        path then answers duplicate or conflict). On SQLite one writer at a time holds the
        file. Rows are locked in id order, so two batches naming the same ids cannot deadlock.
        """
        labelled = set()
        p, s = predictions.c, shadow_predictions.c
        with _store_errors("record feedback"), self._writing() as conn:
            for item in sorted(labels, key=lambda label: label.prediction_id):
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

    def version_counts(
        self, model: str, since: datetime | None, until: datetime | None = None
    ) -> list[VersionCounts]:
        with _store_errors("read live quality"), self.engine.connect() as conn:
            served = conn.execute(version_counts_query(model, since, until=until)).all()
            shadow = conn.execute(
                version_counts_query(model, since, shadow_predictions, until)
            ).all()
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

    def labelled_rows(
        self, model: str, since: datetime | None, until: datetime | None
    ) -> list[LabelledRow]:
        with _store_errors("read labelled predictions"), self.engine.connect() as conn:
            rows = conn.execute(labelled_rows_query(model, since, until)).all()
        return [
            LabelledRow(
                id=row.id,
                version=row.version,
                created_at=as_utc(row.created_at) or row.created_at,
                inputs=row.inputs,
                ground_truth=_ground_truth(row.ground_truth),
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
        if self._file is not None:
            self._file.close()

    @contextlib.contextmanager
    def transaction(self, action: str) -> Iterator[Connection]:
        """A write transaction queued with the log writer's (retention's deletes); database
        errors as StoreUnavailable, naming ``action``."""
        with _store_errors(action), self._writing() as conn:
            yield conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction. SQLite takes one writer at a time, and one that finds the file
        locked sleeps in its busy handler (up to 100 ms a nap): writers of this process queue
        on a lock instead, and are woken as soon as the one before them commits. A SQLite file
        removed or replaced since the last write is an outage until it is whole again."""
        with self._write_lock:
            if self._file is not None:
                self._file.ensure(self._disconnect, self._create_schema)
            with self.engine.begin() as conn:
                yield conn

    def _disconnect(self) -> None:
        """Close every connection to the old file, or refuse (the store stays down a moment):
        a reader's connection closed after the new file is in place would, as the last one
        on the old file, delete the new file's write-ahead log by its name."""
        checked_out = getattr(self.engine.pool, "checkedout", lambda: 0)()
        if checked_out:
            raise StoreUnavailable(
                f"the SQLite file is being replaced; {checked_out} reads still running"
            )
        self.engine.dispose()

    def _create_schema(self) -> None:
        with _store_errors("create its schema"):
            migrate(self.engine)


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
        created_at=as_utc(row["created_at"]) or row["created_at"],
        output=row["output"],
        ground_truth=_ground_truth(row["ground_truth"]),
        correct=row["correct"],
        abs_error=row["abs_error"],
        feedback_at=as_utc(row["feedback_at"]),
    )


def open_configured_store(settings: Settings) -> SqlStore:
    """The store ``settings`` name (STEWARD_DATABASE_URL, else SQLite in STEWARD_DATA_DIR), a
    PostgreSQL one's pool sized by them; as ``open_store``."""
    return open_store(settings.store_url, PoolOptions.of(settings))


def open_store(url: str, pool: PoolOptions = DEFAULT_POOL) -> SqlStore:
    """Open (creating if needed) the store at a SQLAlchemy URL; StoreUnavailable if it cannot.
    ``pool`` sizes a PostgreSQL store's connection pool (app/store/pool.py)."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # its message would repeat the URL, password included
        raise StoreUnavailable(
            "the store URL is not a SQLAlchemy URL (dialect+driver://user:password@host/database)"
        ) from None
    # hide_parameters: an SQLAlchemy error's text never quotes the rows' inputs and outputs, if
    # one reaches a log line unwrapped (the store's own errors name the driver's reason only).
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                _make_folder(Path(parsed.database).parent)
            engine = create_engine(url, json_serializer=_json_text, hide_parameters=True)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(
                url, json_serializer=_json_text, hide_parameters=True, **pool.engine_arguments()
            )
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
