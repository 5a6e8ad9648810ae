"""The prediction log's INSERTs: many rows a statement, compiled once, straight to the driver."""

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Dialect, Engine, Table, insert

from app.store.base import PredictionRecord
from app.store.schema import predictions, shadow_predictions


class BulkInsert:
    """The log's INSERTs: served rows into ``predictions``, shadow rows (``shadow_of`` set)
    into ``shadow_predictions``, in the order given and in the caller's one transaction."""

    def __init__(self, engine: Engine) -> None:
        dialect, max_parameters = engine.dialect, _max_parameters(engine)
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


def _same(value: Any) -> Any:
    return value


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
