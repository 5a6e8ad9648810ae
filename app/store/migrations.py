"""The store's schema version, and the steps that bring a store up to it.

A one-row table, ``steward_schema_version``, holds the version a store is at. At open, the steps
above it run in order, in one transaction with the version's update on SQLite, each step in one
with its own on PostgreSQL (both roll DDL back), so a store is at one version or the next, never
between. A store made before
this table existed is at version 0: the first step is the schema as it then was, each part
IF NOT EXISTS, so it keeps its rows and gains only what it lacks.

Several processes starting at once on one store take turns: on PostgreSQL a session-level
advisory lock (below), on SQLite a ``BEGIN IMMEDIATE`` transaction (the file's write lock,
waited for). The one that comes second finds the store migrated and does nothing. A store at a
version above this Steward's is refused: an older release cannot know what a newer one changed.

On PostgreSQL an index added to an existing table (``IndexStep``) is built with ``CREATE INDEX
CONCURRENTLY``, outside any transaction: a plain CREATE INDEX holds a SHARE lock for the whole
build, and on a large prediction log the replicas of the older release still serving during a
rolling upgrade could not insert meanwhile. Such a build can fail and leave an invalid index
behind (``pg_index.indisvalid``), which IF NOT EXISTS would then keep: it is dropped and built
again before the version moves on. The turns are then taken with a session-level advisory lock,
asked for again and again (``pg_try_advisory_lock``) rather than waited for in one statement: a
waiting statement holds a snapshot, and a concurrent build waits for every older snapshot, so
the process building would wait for the one waiting for it. Each step then commits with its
version, so a store is still at one version or the next.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateIndex

from app.errors import StoreSchemaTooNew
from app.store.schema import LATER_INDEXES, predictions, schema, shadow_predictions

_version_schema = MetaData()
schema_version = Table(
    "steward_schema_version",
    _version_schema,
    Column("version", Integer, nullable=False),
)

# Any fixed 64-bit number, the same in every Steward: the key of the migration's advisory lock.
ADVISORY_LOCK_KEY = 0x5374657761726401

# Retention (app/store/retention.py) finds the oldest rows by created_at alone; the indexes that
# lead with model cannot give them in that order.
created_at_index = Index("ix_predictions_created_at", predictions.c.created_at)


def _baseline(conn: Connection) -> None:
    """The schema of the releases before versioning: every table missing (a new table comes
    with all its indexes, later ones included), and the indexes those releases added to their
    existing tables, each only if missing."""
    schema.create_all(conn, checkfirst=True)
    for index in (*predictions.indexes, *shadow_predictions.indexes):
        if index.name in LATER_INDEXES:
            conn.execute(CreateIndex(index, if_not_exists=True))


@dataclass(frozen=True)
class IndexStep:
    """A step that adds an index to an existing table: in the migration's transaction on
    SQLite, concurrently and outside any transaction on PostgreSQL (``build_concurrently``)."""

    index: Index

    def __call__(self, conn: Connection) -> None:
        conn.execute(CreateIndex(self.index, if_not_exists=True))

    def build_concurrently(self, conn: Connection, attempts: int = 3) -> None:
        """CREATE INDEX CONCURRENTLY on an AUTOCOMMIT connection to PostgreSQL; an invalid
        index (a build that failed, here or in a process that died) is dropped and built
        again, up to ``attempts`` times."""
        quote = conn.dialect.identifier_preparer
        name = quote.quote(self.index.name or "")
        columns = ", ".join(quote.quote(column.name) for column in self.index.columns)
        table = quote.format_table(self.index.table)  # type: ignore[arg-type]
        valid = text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)")
        for _ in range(attempts):
            conn.exec_driver_sql(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({columns})"
            )
            if conn.execute(valid, {"name": name}).scalar():
                return
            conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        raise RuntimeError(f"index {self.index.name} stays invalid after {attempts} builds")


Step = Callable[[Connection], None]
STEPS: tuple[Step, ...] = (_baseline, IndexStep(created_at_index))
"""Step i takes a store from version i to i + 1. Append only; never edit a released step."""
LATEST = len(STEPS)


def migrate(engine: Engine) -> int:
    """Bring the store to LATEST (from any earlier version, or none); return the version it
    was at. StoreSchemaTooNew for a store a newer Steward has migrated."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        locking = _immediate_engine(engine)
        try:
            with locking.begin() as conn:
                return _migrate(conn)
        finally:
            locking.dispose()
    if engine.dialect.name == "postgresql":
        # Connections of their own, closed when done: the lock's and a step's are two at once,
        # which a serving pool of one (STEWARD_DATABASE_POOL_SIZE=1, no overflow) cannot give.
        apart = create_engine(engine.url, poolclass=NullPool, hide_parameters=True)
        try:
            return _migrate_postgresql(apart)
        finally:
            apart.dispose()
    with engine.begin() as conn:
        return _migrate(conn)


def _migrate(conn: Connection) -> int:
    found = _found_version(conn)
    current = 0 if found is None else found
    for step in STEPS[current:]:
        step(conn)
    if found is None:
        conn.execute(insert(schema_version).values(version=LATEST))
    elif current < LATEST:
        conn.execute(update(schema_version).values(version=LATEST))
    return current


def _found_version(conn: Connection) -> int | None:
    """The store's version (None: no version table yet, created now); StoreSchemaTooNew
    above LATEST."""
    _version_schema.create_all(conn, checkfirst=True)
    found = conn.execute(select(schema_version.c.version)).scalar()
    if found is not None and found > LATEST:
        raise StoreSchemaTooNew(
            f"the prediction store is at schema version {found}, newer than this Steward's "
            f"({LATEST}): upgrade Steward, or point it at another store"
        )
    return found


def _migrate_postgresql(engine: Engine, poll_seconds: float = 0.1) -> int:
    """Each step committed with its version, under a session-level advisory lock held by an
    idle connection (one a concurrent index build does not wait for)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        take = f"SELECT pg_try_advisory_lock({ADVISORY_LOCK_KEY})"
        while not lock.exec_driver_sql(take).scalar():
            time.sleep(poll_seconds)
        try:
            with engine.begin() as conn:
                found = _found_version(conn)
                if found is None:
                    conn.execute(insert(schema_version).values(version=0))
            current = found or 0
            for number in range(current, LATEST):
                step = STEPS[number]
                if isinstance(step, IndexStep):
                    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as auto:
                        step.build_concurrently(auto)
                with engine.begin() as conn:
                    if not isinstance(step, IndexStep):
                        step(conn)
                    conn.execute(update(schema_version).values(version=number + 1))
            return current
        finally:
            lock.exec_driver_sql(f"SELECT pg_advisory_unlock({ADVISORY_LOCK_KEY})")


def _immediate_engine(engine: Engine) -> Engine:
    """An engine on the same SQLite file whose transactions begin IMMEDIATE: the write lock is
    taken at BEGIN (a second process waits for it there, up to the timeout), not at the first
    write, when a reader's snapshot would already be stale. The pysqlite driver's own
    transaction handling is turned off so that SQLAlchemy's BEGIN is the one sent."""
    locking = create_engine(engine.url, connect_args={"timeout": 60})

    @event.listens_for(locking, "connect")
    def _no_driver_transactions(dbapi_connection: object, _: object) -> None:
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
        # WAL before anything else, with this engine's wait for locks: the store's own
        # connections then find it set, and need no exclusive lock to set it again.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # type: ignore[attr-defined]

    @event.listens_for(locking, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return locking
