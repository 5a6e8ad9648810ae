"""A real server process on loopback, as the tests and the benchmark run one.

Start it, wait until it answers, stop it (SIGTERM first: a graceful shutdown drains the
prediction log), and never leave it behind. The tests import this module too (pytest puts
bench/ on its path: ``pythonpath`` in pyproject.toml), so both start ``steward serve`` the same
way. Standard library only: ``make bench`` runs without the test dependencies.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STEWARD = Path(sys.executable).parent / "steward"  # the console script of this environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A process serving HTTP on ``127.0.0.1:port``, its output (both streams) in ``log``."""

    def __init__(
        self, argv: Sequence[str | Path], *, port: int, env: Mapping[str, str], log: Path
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [str(arg) for arg in argv],
                env=dict(env),
                stdout=output,
                stderr=output,
                start_new_session=True,  # its own process group: see stop()
            )

    def wait_ready(self, path: str, seconds: float = 60) -> None:
        """Until GET ``path`` answers 200; RuntimeError (with the log) if the process exits or
        it never does."""
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.url}{path} never answered 200:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the process alone (as ``docker stop`` to PID 1), SIGKILL after ``timeout``
        seconds, then SIGKILL to whatever it started and left behind. The exit status; stopping
        twice is fine."""
        code = stop(self.process, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return code

    def rss_mib(self) -> float:
        return self._status_kib("VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return self._status_kib("VmHWM") / 1024

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} for process {self.process.pid}")


@contextmanager
def serving(
    argv: Sequence[str | Path],
    *,
    port: int,
    env: Mapping[str, str],
    log: Path,
    ready: str,
    seconds: float = 60,
) -> Iterator[Server]:
    """A ``Server`` that answers GET ``ready`` with 200; stopped on the way out, whatever
    happened."""
    server = Server(argv, port=port, env=env, log=log)
    try:
        server.wait_ready(ready, seconds)
        yield server
    finally:
        server.stop()


def stop(process: "subprocess.Popen[Any]", timeout: float) -> int:
    """SIGTERM, then SIGKILL if ``process`` is still there after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
