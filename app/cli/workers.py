"""``steward serve --workers N``: one listening socket, N worker processes serving it, and this
process supervising them.

Each worker is ``steward serve`` of one process (``serve_app``: the app from the parent's
Settings, the header-timeout protocol, the log config, the drain and its exit statuses) on the
socket the parent bound. The parent:

- holds a lock on ``STEWARD_METRICS_DIR`` for its whole life (a second server there would delete
  the first one's live metric files at its start): that server is refused in one line;
- stops everything when one of the first workers fails its start-up (status 3: it would fail
  again, and the server never served); a worker that dies later, whatever its status, a
  replacement's failed start-up included, is marked dead (``mark_process_dead``) and started again
  after a wait that doubles from 1 s to 30 s while its slot keeps failing (back to 1 s once a
  worker lived a minute): no tight respawn loop, and the other workers keep serving;
- on SIGTERM or SIGINT has every worker drain, and exits with the worst of their statuses. A
  worker starts with SIGINT ignored until it serves (Ctrl-C reaches the whole process group: the
  parent's SIGTERM stops it instead, with no KeyboardInterrupt traceback), and one killed by a
  signal before it took the signal over had served nothing: not a failed drain.

A worker whose parent is gone (SIGKILLed) drains as on SIGTERM, rather than serve on unsupervised
holding the port.

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
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from app.cli.metrics_folder import metrics_dir
from app.cli.server_commands import STARTUP_FAILURE, serve_app
from app.errors import StewardError
from app.settings import Settings

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
SPAWN = multiprocessing.get_context("spawn")
WATCH_SECONDS = 0.5  # how soon a stop signal is acted on while the workers serve
STOP_MARGIN_SECONDS = 30.0  # beyond a worker's own drain and log timeouts, before SIGKILL
RESTART_FIRST_SECONDS = 1.0  # the wait before a dead worker's slot is filled again, doubling
RESTART_MAX_SECONDS = 30.0
RESTART_RESET_SECONDS = 60.0  # a worker that lived this long: its successor waits the least

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


def restart_delay(previous: float | None, lived: float) -> float:
    """The wait before starting a worker again in the slot of one that died after ``lived``
    seconds, the wait before that one having been ``previous`` (None: it was of the first)."""
    if previous is None or lived >= RESTART_RESET_SECONDS:
        return RESTART_FIRST_SECONDS
    return min(previous * 2, RESTART_MAX_SECONDS)


@dataclass
class Slot:
    """One worker's place: the process in it, and, once that died, when it is filled again."""

    process: SpawnProcess
    started: float  # time.monotonic()
    restarts: int = 0  # 0: one of the first workers, whose failed start-up stops the server
    delay: float | None = None  # the last wait before a restart
    restart_at: float | None = None  # set while the slot is empty


class Supervisor:
    """The workers, their socket, and what their exits mean."""

    def __init__(self, settings: Settings, log_config: dict[str, Any], path: Path) -> None:
        self.settings = settings
        self.log_config = log_config
        self.path = path
        self.stopping = threading.Event()
        self.slots: list[Slot] = []
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
                self.slots.append(Slot(self._start(), time.monotonic()))
            self._watch()
            return self._stop_all()
        finally:
            for slot in self.slots:  # none left behind, whatever went wrong above
                if slot.process.exitcode is None:
                    slot.process.kill()
                    slot.process.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.socket.close()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def _start(self) -> SpawnProcess:
        process = SPAWN.Process(
            target=work, args=(self.settings, self.log_config, self.socket), name="steward-worker"
        )
        with _sigint_ignored_by_children():
            process.start()
        logger.info("worker [%d] started", process.pid)
        return process

    def _watch(self) -> None:
        """Until a stop signal or a first worker's failed start-up: start again, each after its
        wait, the workers that exit."""
        while not self.stopping.is_set():
            live = [slot.process.sentinel for slot in self.slots if slot.restart_at is None]
            multiprocessing.connection.wait(live, timeout=WATCH_SECONDS)
            for slot in self.slots:
                if self.stopping.is_set():
                    return
                if slot.restart_at is None and slot.process.exitcode is not None:
                    self._exited(slot)
                elif slot.restart_at is not None and time.monotonic() >= slot.restart_at:
                    slot.process = self._start()
                    slot.started, slot.restart_at = time.monotonic(), None
                    slot.restarts += 1

    def _exited(self, slot: Slot) -> None:
        """Mark the worker dead; stop the server if it was one of the first and failed its
        start-up, or else have its slot filled again after its wait."""
        pid, code = slot.process.pid, slot.process.exitcode
        assert pid is not None  # started
        mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]
        if code == STARTUP_FAILURE and slot.restarts == 0:
            logger.error("worker [%d] failed to start: stopping the server", pid)
            self.failed_start = pid
            self.stopping.set()
            return
        slot.delay = restart_delay(slot.delay, time.monotonic() - slot.started)
        slot.restart_at = time.monotonic() + slot.delay
        logger.warning("worker [%d] %s: starting another in %g s", pid, _exit(code), slot.delay)

    def _stop_all(self) -> int:
        """Every worker drains; the worst exit status (an error for one that left rows). A slot
        waiting for its restart has no worker: its last one was reported when it died."""
        self.socket.close()  # new connections are refused once every worker closed its copy
        workers = [slot.process for slot in self.slots if slot.restart_at is None]
        for worker in workers:
            if worker.exitcode is None and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        seconds = (
            self.settings.drain_seconds
            + self.settings.shutdown_timeout_seconds
            + STOP_MARGIN_SECONDS
        )
        for worker in workers:
            worker.join(seconds)
            if worker.exitcode is None:
                logger.error("worker [%d] did not stop in %.0f s: killed", worker.pid, seconds)
                worker.kill()
                worker.join()
            assert worker.pid is not None
            mark_process_dead(worker.pid, str(self.path))  # type: ignore[no-untyped-call]
        if self.failed_start is not None:
            return STARTUP_FAILURE
        # Stopped by a signal before it took the signal over: it had served nothing yet.
        served = (0, -signal.SIGTERM, -signal.SIGINT)
        failed = [w for w in workers if w.exitcode not in served]
        if not failed:
            return 0
        worst = max(failed, key=lambda w: w.exitcode or 0)  # killed (negative): 1, below 3
        if worst.exitcode == STARTUP_FAILURE:
            logger.error("worker [%d] failed to start: see the log above", worst.pid)
            return STARTUP_FAILURE
        raise StewardError(
            f"{len(failed)} of {len(workers)} workers did not drain: worker "
            f"[{worst.pid}] {_exit(worst.exitcode)}; acknowledged predictions may be "
            "unwritten (its error is in the log above)"
        )


@contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """A process started in here begins with SIGINT ignored and blocked (both inherited through
    exec; ``work`` unblocks it), as multiprocessing's resource tracker is started: a Ctrl-C to
    the process group while the worker imports is no KeyboardInterrupt traceback. This process
    holds such a SIGINT pending (Linux keeps a blocked signal, ignored or not) and acts on it
    once its handler is back."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def work(settings: Settings, log_config: dict[str, Any], sock: socket.socket) -> None:
    """A worker process: ``steward serve`` of one process on ``sock``, exiting with its
    status: 3 when it could not start, 1 with an error logged when it did not drain.

    SIGINT stays ignored until ``serve_app`` takes it over (a Ctrl-C meanwhile is its parent's
    to act on); a SIGINT held since the start is dropped here."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    threading.Thread(target=_drain_when_orphaned, name="steward-orphan", daemon=True).start()
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


def _drain_when_orphaned() -> None:
    """Once the parent is gone (SIGKILLed: it could not stop its workers), drain as SIGTERM has
    a worker do, rather than serve on unsupervised, holding the port."""
    parent = multiprocessing.parent_process()
    assert parent is not None  # a spawned worker
    multiprocessing.connection.wait([parent.sentinel])
    os.kill(os.getpid(), signal.SIGTERM)


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
