"""The store's schema version, and the steps that bring a store up to it.

A one-row table, ``steward_schema_version``, holds the version a store is at. At open, the steps
above it run in order, in one transaction with the version's update (SQLite and PostgreSQL both
roll DDL back), so a store is at one version or the next, never between. A store made before
this table existed is at version 0: the first step is the schema as it then was, each part
IF NOT EXISTS, so it keeps its rows and gains only what it lacks.

Several processes starting at once on one store take turns: on PostgreSQL a transaction-level
advisory lock, on SQLite a ``BEGIN IMMEDIATE`` transaction (the file's write lock, waited for).
The one that comes second finds the store migrated and does nothing. A store at a version above
this Steward's is refused: an older release cannot know what a newer one changed.
"""

from collections.abc import Callable

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
    update,
)
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


def _created_at_index(conn: Connection) -> None:
    conn.execute(CreateIndex(created_at_index, if_not_exists=True))


STEPS: tuple[Callable[[Connection], None], ...] = (_baseline, _created_at_index)
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
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
        return _migrate(conn)


def _migrate(conn: Connection) -> int:
    _version_schema.create_all(conn, checkfirst=True)
    found = conn.execute(select(schema_version.c.version)).scalar()
    current = 0 if found is None else found
    if current > LATEST:
        raise StoreSchemaTooNew(
            f"the prediction store is at schema version {current}, newer than this Steward's "
            f"({LATEST}): upgrade Steward, or point it at another store"
        )
    for step in STEPS[current:]:
        step(conn)
    if found is None:
        conn.execute(insert(schema_version).values(version=LATEST))
    elif current < LATEST:
        conn.execute(update(schema_version).values(version=LATEST))
    return current


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
