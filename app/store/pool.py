"""How a process shares its connections to a PostgreSQL store: one pool, sized by settings.

The pool is SQLAlchemy's own QueuePool over psycopg 3, not psycopg_pool. The store is SQLAlchemy
Core, and the engine's pool is the one that sees what the SQL layer sees: a disconnection
error invalidates that connection and every older one in the pool (a restarted server cut them
all), ``pool_pre_ping`` tests each one as it is checked out, and waiting
past ``pool_timeout`` raises the error the store already reports as an outage (503
``store_unavailable``). psycopg_pool under SQLAlchemy would be a second pool beneath NullPool,
its own threads and health checks blind to the engine's invalidations, and one more dependency;
what it adds (an async pool, a minimum that grows on demand) the store, which is synchronous
and called from worker threads, does not use.

Every store call of the process draws from the one pool: the log writer's transactions, each
feedback request's read and label, live-quality reads, retention and the write probe. No call
holds one connection while it waits for another, so a pool of one connection is slow under
load but never stuck. Schema migrations take their connections apart (app/store/migrations.py),
and close them before the store serves.

SQLite keeps SQLAlchemy's defaults: its connections are to a local file, with no server limit
for replicas to share, and its writers queue on the store's lock whatever the pool's size.
"""

from dataclasses import dataclass
from typing import Any

from app.settings import Settings


@dataclass(frozen=True)
class PoolOptions:
    """``size`` connections kept open, up to ``max_overflow`` more at busy moments, and how long
    a call waits for one (``timeout_seconds``) before the store counts as unavailable."""

    size: int = 5
    max_overflow: int = 5
    timeout_seconds: float = 10.0

    @classmethod
    def of(cls, settings: Settings) -> "PoolOptions":
        return cls(
            settings.database_pool_size,
            settings.database_pool_max_overflow,
            settings.database_pool_timeout_seconds,
        )

    def engine_arguments(self) -> dict[str, Any]:
        """``create_engine`` arguments for a PostgreSQL engine."""
        return {
            "pool_size": self.size,
            "max_overflow": self.max_overflow,
            "pool_timeout": self.timeout_seconds,
            "pool_pre_ping": True,
        }
