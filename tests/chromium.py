"""A real headless Chromium for tests, driven over the DevTools protocol.

The protocol runs on a pipe (``--remote-debugging-pipe``: Chromium reads commands on fd 3 and
writes replies on fd 4, each a JSON message ended by a NUL byte), so it needs no port and no
client library. Debian's ``chromium`` package provides the browser (``make chromium``).
"""

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from server import stop

CHROMIUM = shutil.which("chromium")
# Chromium wants its pipe on fds 3 and 4: the shell moves our stdin and stdout pipes there.
ON_FDS_3_AND_4 = 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2'


class DevToolsError(AssertionError):
    """Chromium answered a command with an error, died, or did not answer in time."""


class Page:
    """One tab, attached to over the browser's DevTools pipe."""

    def __init__(self, commands: IO[bytes], replies: IO[bytes], timeout: float) -> None:
        self._commands = commands
        self._replies = replies.fileno()
        self._timeout = timeout
        self._buffer = b""
        self._last_id = 0
        self._session: str | None = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        attached = self.send("Target.attachToTarget", targetId=target, flatten=True)
        self._session = attached["sessionId"]

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (a promise is awaited)."""
        reply = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in reply:
            raise DevToolsError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        self._commands.write(json.dumps(message).encode() + b"\0")
        self._commands.flush()
        while True:  # skip events (no id) until our reply arrives
            reply = self._next_message()
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def _next_message(self) -> dict[str, Any]:
        deadline = time.monotonic() + self._timeout
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._replies], [], [], remaining)[0]:
                raise DevToolsError(f"no reply from Chromium within {self._timeout} s")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise DevToolsError("Chromium closed its DevTools pipe (it exited)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed


@contextmanager
def headless_page(profile: Path, log: Path, timeout: float = 30) -> Iterator[Page]:
    """A tab of a fresh headless Chromium (its profile in ``profile``, its output in ``log``)."""
    if CHROMIUM is None:
        raise AssertionError("chromium is not installed: `make chromium` installs Debian's package")
    flags = [
        "--headless=new",
        "--no-sandbox",  # Chromium refuses to run as root with its sandbox
        "--disable-gpu",
        "--no-first-run",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        "--window-size=1280,2000",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["sh", "-c", ON_FDS_3_AND_4, CHROMIUM, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=output,
        )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        yield Page(process.stdin, process.stdout, timeout)
    finally:
        stop(process, timeout=10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
