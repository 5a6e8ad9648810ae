"""The live-quality aggregates (app/quality.py), one SQL query each, bounded by an index."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Select, Table, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from app.store.schema import as_utc, predictions, shadow_predictions

# No error the feedback path accepts is larger (app/ground_truth.HARD_LIMIT): its square is
# finite. A larger one, kept in a log older than that limit, squares to infinity and RMSE is
# null; SQLite's arithmetic gets there by itself, PostgreSQL's raises an overflow and fails the
# whole query instead, so such a square is infinity in the SQL.
SQUARABLE = 1e100


class _Infinity(ColumnElement[float]):
    """+infinity as a float8/REAL: a literal beyond SQLite's range, PostgreSQL's 'Infinity'."""

    type = Float()
    inherit_cache = True


@compiles(_Infinity)
def _infinity(element: _Infinity, compiler: SQLCompiler, **kw: Any) -> str:
    return "9e999"


@compiles(_Infinity, "postgresql")
def _infinity_postgresql(element: _Infinity, compiler: SQLCompiler, **kw: Any) -> str:
    return "'Infinity'::float8"


def _squared(error: ColumnElement[float]) -> ColumnElement[float]:
    return case((error > SQUARABLE, _Infinity()), else_=error * error)


def version_counts_query(
    model: str,
    since: datetime | None,
    table: Table = predictions,
    until: datetime | None = None,
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
            func.coalesce(func.sum(_squared(c.abs_error)), 0.0).label("squared_error_sum"),
        )
        .where(c.model == model)
        .group_by(c.version)
        .order_by(c.version)
    )
    return _until(_since(query, c.created_at, since), c.created_at, until)


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
            func.coalesce(func.sum(_squared(p.abs_error)), 0.0).label("champion_squared_error_sum"),
            func.coalesce(func.sum(_squared(s.abs_error)), 0.0).label(
                "challenger_squared_error_sum"
            ),
        )
        .select_from(shadow_predictions.join(predictions, p.id == s.prediction_id))
        .where(s.model == model, s.ground_truth.is_not(None), p.ground_truth.is_not(None))
        .group_by(p.version, s.version)
        .order_by(p.version, s.version)
    )
    # The served row's window, as in version_counts; the shadow's own bound (never earlier than
    # its served row's) changes nothing but lets the shadow (model, created_at) index bound it.
    return _since(_since(query, p.created_at, since), s.created_at, since)


def labelled_rows_query(model: str, since: datetime | None, until: datetime | None) -> Select[Any]:
    """SqlStore.labelled_rows' query: one model's labelled served rows in a time window, oldest
    first, bounded (and ordered) by the (model, created_at) index. Shadow rows live in another
    table: never read here."""
    c = predictions.c
    query = (
        select(c.id, c.version, c.created_at, c.inputs, c.ground_truth)
        .where(c.model == model, c.ground_truth.is_not(None))
        .order_by(c.created_at, c.id)
    )
    return _until(_since(query, c.created_at, since), c.created_at, until)


def _until(query: Select[Any], created_at: Any, until: datetime | None) -> Select[Any]:
    """``query`` bounded to rows made before ``until`` (unbounded when None)."""
    if until is None:
        return query
    return query.where(created_at < _utc(until))


def _since(query: Select[Any], created_at: Any, since: datetime | None) -> Select[Any]:
    """``query`` bounded to rows made at or after ``since`` (unbounded when None)."""
    if since is None:
        return query
    return query.where(created_at >= _utc(since))


def _utc(bound: datetime) -> datetime:
    """A window's bound in UTC: SQLite compares the stored UTC text, so the bound must be UTC
    too (a naive one is taken as UTC, as stored)."""
    return (as_utc(bound) or bound).astimezone(UTC)
