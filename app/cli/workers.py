"""``steward serve --workers N``: one listening socket, N worker processes serving it, and this
process supervising them.

Each worker is ``steward serve`` of one process (``serve_app``: the app from the parent's
Settings, the header-timeout protocol, the log config, the drain and its exit statuses) on the
socket the parent bound. The parent replaces a worker that dies (marking its metric files dead),
stops everything when one fails its start-up (status 3: it would fail again), and on SIGTERM or
SIGINT has every worker drain and exits with the worst of their statuses.

Why not uvicorn's own supervisor (``uvicorn.supervisors.Multiprocess``): its workers run
uvicorn's Server on a pickled Config, not our app with its Shutdown record; it joins its workers
without looking at their exit statuses, and a dead worker is replaced with no hook where
``mark_process_dead`` could run. A subclass would override ``run``, ``keep_subprocess_alive`` and
the worker's target: nearly all of it. The pieces are uvicorn's (``Config.bind_socket()``,
``Server.run(sockets=...)``), in processes started by multiprocessing's spawn: a fresh
interpreter, which imports prometheus-client only after ``PROMETHEUS_MULTIPROC_DIR`` is set
(prometheus-client picks where values live when it is imported).

Not watched: a worker that hangs without exiting (the /healthz probe of an orchestrator is).
"""

import logging
import logging.config
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from app.cli.server_commands import STARTUP_FAILURE, serve_app
from app.errors import StewardError
from app.settings import Settings

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# The files prometheus-client's multiprocess mode writes: <type>[_<gauge mode>]_<pid>.db.
METRIC_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_[0-9]+\.db")
SPAWN = multiprocessing.get_context("spawn")
WATCH_SECONDS = 0.5  # how soon a stop signal is acted on while the workers serve
STOP_MARGIN_SECONDS = 30.0  # beyond a worker's own drain and log timeouts, before SIGKILL

logger = logging.getLogger(__name__)


def supervise(settings: Settings, log_config: dict[str, Any]) -> int:
    """Serve with ``settings.workers`` workers until SIGTERM or SIGINT; the exit status (0:
    every worker drained; 3: one failed its start-up), or an error naming the worker that did
    not drain."""
    with metrics_dir(settings.metrics_dir) as path:
        previous = os.environ.get(MULTIPROC_VARIABLE)
        os.environ[MULTIPROC_VARIABLE] = str(path)  # in the environment the workers start with
        try:
            return Supervisor(settings, log_config, path).run()
        finally:
            if previous is None:
                os.environ.pop(MULTIPROC_VARIABLE, None)
            else:
                os.environ[MULTIPROC_VARIABLE] = previous


@contextmanager
def metrics_dir(configured: Path | None) -> Iterator[Path]:
    """Where the workers keep their metric files: ``configured``, made if missing and emptied
    of a previous run's metric files (they would add to this run's counts; other files stay),
    or a temporary folder removed on the way out."""
    if configured is None:
        path = Path(tempfile.mkdtemp(prefix="steward-metrics-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    try:
        configured.mkdir(parents=True, exist_ok=True)
        found = sorted(configured.glob("*.db"))
        others = [path.name for path in found if not METRIC_FILE.fullmatch(path.name)]
        if others:  # a scrape reads every *.db there; a store's file is not to be deleted
            raise StewardError(
                f"STEWARD_METRICS_DIR: {configured} holds files that are not metric files "
                f"({', '.join(others[:3])}): give the workers a folder of their own"
            )
        for stale in found:
            stale.unlink()
        with tempfile.TemporaryFile(dir=configured):  # the workers will write here
            pass
    except OSError as exc:
        raise StewardError(
            f"STEWARD_METRICS_DIR: cannot use {configured} for the workers' metrics: "
            f"{exc.strerror or exc}"
        ) from exc
    yield configured


class Supervisor:
    """The workers, their socket, and what their exits mean."""

    def __init__(self, settings: Settings, log_config: dict[str, Any], path: Path) -> None:
        self.settings = settings
        self.log_config = log_config
        self.path = path
        self.stopping = threading.Event()
        self.workers: list[SpawnProcess] = []
        self.failed_start: int | None = None  # the worker whose start-up failed

    def run(self) -> int:
        import uvicorn

        config = uvicorn.Config(
            "app.main:create_app",
            host=self.settings.host,
            port=self.settings.port,
            log_config=self.log_config,
        )
        self.socket = config.bind_socket()
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.settings.workers):
                self.workers.append(self._start())
            self._watch()
            return self._stop_all()
        finally:
            for worker in self.workers:  # none left behind, whatever went wrong above
                if worker.exitcode is None:
                    worker.kill()
                    worker.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.socket.close()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def _start(self) -> SpawnProcess:
        process = SPAWN.Process(
            target=work, args=(self.settings, self.log_config, self.socket), name="steward-worker"
        )
        process.start()
        logger.info("worker [%d] started", process.pid)
        return process

    def _watch(self) -> None:
        """Until a stop signal or a failed start-up: replace each worker that exits."""
        while not self.stopping.is_set():
            sentinels = [worker.sentinel for worker in self.workers]
            multiprocessing.connection.wait(sentinels, timeout=WATCH_SECONDS)
            for index, worker in enumerate(self.workers):
                if worker.exitcode is None or self.stopping.is_set():
                    continue
                assert worker.pid is not None  # started
                mark_process_dead(worker.pid, str(self.path))  # type: ignore[no-untyped-call]
                if worker.exitcode == STARTUP_FAILURE:
                    logger.error("worker [%d] failed to start: stopping the server", worker.pid)
                    self.failed_start = worker.pid
                    self.stopping.set()
                    return
                logger.warning(
                    "worker [%d] %s: starting another", worker.pid, _exit(worker.exitcode)
                )
                self.workers[index] = self._start()

    def _stop_all(self) -> int:
        """Every worker drains; the worst exit status (an error for one that left rows)."""
        self.socket.close()  # new connections are refused once every worker closed its copy
        for worker in self.workers:
            if worker.exitcode is None and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        seconds = (
            self.settings.drain_seconds
            + self.settings.shutdown_timeout_seconds
            + STOP_MARGIN_SECONDS
        )
        for worker in self.workers:
            worker.join(seconds)
            if worker.exitcode is None:
                logger.error("worker [%d] did not stop in %.0f s: killed", worker.pid, seconds)
                worker.kill()
                worker.join()
            assert worker.pid is not None
            mark_process_dead(worker.pid, str(self.path))  # type: ignore[no-untyped-call]
        if self.failed_start is not None:
            return STARTUP_FAILURE
        # A worker stopped by SIGTERM before it took over the signal had served nothing yet.
        failed = [w for w in self.workers if w.exitcode not in (0, -signal.SIGTERM)]
        if not failed:
            return 0
        worst = max(failed, key=lambda w: w.exitcode or 0)  # killed (negative): 1, below 3
        if worst.exitcode == STARTUP_FAILURE:
            logger.error("worker [%d] failed to start: see the log above", worst.pid)
            return STARTUP_FAILURE
        raise StewardError(
            f"{len(failed)} of {len(self.workers)} workers did not drain: worker "
            f"[{worst.pid}] {_exit(worst.exitcode)}; acknowledged predictions may be "
            "unwritten (its error is in the log above)"
        )


def work(settings: Settings, log_config: dict[str, Any], sock: socket.socket) -> None:
    """A worker process: ``steward serve`` of one process on ``sock``, exiting with its
    status: 3 when it could not start, 1 with an error logged when it did not drain."""
    logging.config.dictConfig(log_config)
    logging.captureWarnings(True)
    from app.main import Shutdown, create_app

    shutdown = Shutdown()
    try:
        app = create_app(settings, shutdown)
    except Exception as exc:  # what the parent's pre-flight passed, gone since: not retried
        logger.error("worker start-up failed: %s", exc)
        sys.exit(STARTUP_FAILURE)
    try:
        status = serve_app(app, shutdown, settings, log_config, [sock])
    except StewardError as exc:
        logger.error("%s", exc)
        status = 1
    sys.exit(status)


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
