"""Work repeated on the event loop at an interval until closed: the registry rescan
(app/watcher.py) and the automatic-rollback check (app/auto_rollback.py)."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class Periodic:
    """``work`` every ``interval`` seconds, from ``start`` to ``close``; a failure is logged
    and the next round still runs."""

    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self.interval = interval
        self.work = work
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start on the running event loop (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        """Stop; a round under way finishes first."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.work()
            except Exception:  # a bug here must not stop the next rounds
                logger.exception("%s failed", self.name)
