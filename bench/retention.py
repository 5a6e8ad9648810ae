"""What a retention pass costs the predictions served beside it (``bench/run.py
--retention-only``, and the last part of ``make bench``).

A SQLite store is filled with ROWS iris predictions made AGE_DAYS ago (one bulk insert, the
indexes maintained as the server maintains them), then copied for each run. Each run is a real
``steward serve`` on its own copy, driven by wrk on /predict/iris at CONNECTIONS connections
(closed loop: wrk keeps that many requests in flight):

- ``off``: retention off; wrk for ``seconds``: the baseline on a store of ROWS rows;
- ``pass``: STEWARD_RETENTION_SECONDS of 7 days and an interval of START_SECONDS, so that one
  pass starts after start-up and deletes all ROWS; wrk starts when the first rows are gone
  (steward_retention_deleted_rows_total above 0) and runs ``seconds``; how many rows the pass
  had deleted when wrk ended tells whether the window lay within the pass. The pass's length is
  timed from the same counter.

With two cores or more the server runs on one and wrk on another (taskset); the pass runs in
the server's process, on the server's core.
"""

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cpu import pinning
from load import IRIS, Result, lua_post, wrk
from scrape import counter
from server import STEWARD, free_port, serving

from app.settings import Settings
from app.store import open_store

ROWS = 1_000_000
AGE_DAYS = 30
CONNECTIONS = 8
START_SECONDS = 3.0  # STEWARD_RETENTION_INTERVAL_SECONDS: the first pass starts this late
INSERT_CHUNK = 50_000
PASS_SECONDS = 900  # the longest a pass may take before the bench gives up
DELETED = "steward_retention_deleted_rows_total"


@dataclass
class RetentionCost:
    runs: dict[str, Result] = field(default_factory=dict)
    fill_seconds: float = 0.0
    pass_seconds: float = 0.0  # first deleted row seen -> all ROWS deleted, under load
    deleted_when_load_ended: int = 0
    batch_size: int = 0
    pinning: str = ""


def retention_cost(work: Path, seconds: float) -> RetentionCost:
    work.mkdir()
    models_dir = work / "models"
    subprocess.run([STEWARD, "--models-dir", models_dir, "train", "demo"], check=True,
                   capture_output=True)  # fmt: skip
    cost = RetentionCost()
    pinned = pinning()
    cost.pinning = pinned.described
    filled = work / "filled.db"
    began = time.monotonic()
    fill(filled, ROWS)
    cost.fill_seconds = time.monotonic() - began
    script = lua_post(json.dumps({"instances": [IRIS]}), work, "retention-iris")
    for mode in ("off", "pass"):
        data = work / mode
        data.mkdir()
        shutil.copy(filled, data / "steward.db")
        env = os.environ | {
            "STEWARD_MODELS_DIR": str(models_dir),
            "STEWARD_DATA_DIR": str(data),
            "STEWARD_LOG_LEVEL": "warning",
        }
        if mode == "pass":
            env |= {
                "STEWARD_RETENTION_SECONDS": str(7 * 86400),
                "STEWARD_RETENTION_INTERVAL_SECONDS": str(START_SECONDS),
            }
        port = free_port()
        argv: list[str | Path] = [*pinned.prefix(), STEWARD, "serve", "--port", str(port)]
        log = work / f"{mode}.log"
        with serving(argv, port=port, env=env, log=log, ready="/readyz") as server:
            url = f"{server.url}/predict/iris"
            if mode == "off":
                cost.runs[mode] = wrk(url, script, CONNECTIONS, seconds, pinned.load)
                continue
            first = wait_for(lambda: counter(server.url, DELETED) > 0)
            cost.runs[mode] = wrk(url, script, CONNECTIONS, seconds, pinned.load)
            cost.deleted_when_load_ended = counter(server.url, DELETED)
            done = wait_for(lambda: counter(server.url, DELETED) >= ROWS)
            cost.pass_seconds = done - first
    cost.batch_size = Settings.model_fields["retention_batch_size"].default
    return cost


def wait_for(condition: Callable[[], bool], seconds: float = PASS_SECONDS) -> float:
    """Poll ``condition`` until true; when it became true (time.monotonic)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"not done after {seconds} s")


def uuid7_hex(millis: int) -> str:
    """A UUIDv7 of that millisecond, as app/ids.py makes them: old rows' ids in time order, as
    the log's primary-key index holds real ones."""
    head = (millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | 0b10 << 62
    return f"{head | uuid.uuid4().int & (0xFFF << 64 | 0x3FFF_FFFF_FFFF_FFFF):032x}"


def fill(path: Path, rows: int) -> None:
    """A store of ``rows`` iris predictions AGE_DAYS old, made through Steward's own schema
    (open_store), then filled with plain bulk INSERTs."""
    open_store(f"sqlite:///{path}").close()
    start = datetime.now(UTC) - timedelta(days=AGE_DAYS)
    start_ms = int(start.timestamp() * 1000)
    inputs = json.dumps(IRIS)
    output = json.dumps({"prediction": "setosa", "probabilities": {"setosa": 0.98}})
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        for first in range(0, rows, INSERT_CHUNK):
            conn.executemany(
                "INSERT INTO predictions (id, model, version, created_at, inputs, output) "
                "VALUES (?, 'iris', 1, ?, ?, ?)",
                (
                    (
                        uuid7_hex(start_ms + n),
                        (start + timedelta(milliseconds=n)).strftime("%Y-%m-%d %H:%M:%S.%f"),
                        inputs,
                        output,
                    )
                    for n in range(first, min(first + INSERT_CHUNK, rows))
                ),
            )
            conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
