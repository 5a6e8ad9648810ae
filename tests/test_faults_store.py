"""Store failures under a real `steward serve`: the SQLite folder turned read-only (a read-only
volume over it, and the volume under the open file aborted read-only), the SQLite file
removed, the disk full, the PostgreSQL connections cut and refused.

In each, predictions are served while the log's buffer has room, then refused with 503 and
Retry-After (never acknowledged and dropped), /readyz names the store, feedback answers 503,
and once the store is back the server recovers by itself and writes every row it acknowledged.
Recovery times are printed (``pytest -s``), never asserted: docs/operations.md quotes them.

Mounting needs root (CAP_SYS_ADMIN): where the test cannot mount a file system it is skipped,
saying so. Running as root, ``chmod`` does not stop the server from writing; a read-only file
system does.
"""

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import psycopg
import pytest
from helpers import (
    IRIS_SETOSA,
    POSTGRES,
    mounted,
    postgres_database,
    postgres_dsn,
    postgres_url,
    stored_rows,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families
from server import STEWARD, Server, free_port, serving

from app.errors import RETRY_AFTER_SECONDS

MAX_PENDING = 200  # rows the log holds for a store that is down: small, so the tests fill it
ROWS = 10  # rows a request
MAX_REQUESTS = 2000  # a bound on every loop of requests


@dataclass
class Traffic:
    """What the clients of one test were told."""

    acknowledged: list[str] = field(default_factory=list)  # ids of rows answered with 200
    refused: int = 0  # 503s

    def predict(self, http: httpx2.Client) -> httpx2.Response:
        response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA] * ROWS})
        if response.status_code == 200:
            self.acknowledged += [p["id"] for p in response.json()["predictions"]]
        else:
            assert_store_unavailable(response, "store_unavailable")
            self.refused += 1
        return response

    def until_refused(self, http: httpx2.Client) -> int:
        """Predict until the server refuses; how many rows it acknowledged meanwhile."""
        before = len(self.acknowledged)
        for _ in range(MAX_REQUESTS):
            if self.predict(http).status_code == 503:
                return len(self.acknowledged) - before
        raise AssertionError(f"{MAX_REQUESTS} predictions and no refusal")


def assert_store_unavailable(response: httpx2.Response, code: str) -> dict[str, object]:
    """A 503 in the one error shape, with Retry-After in seconds."""
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    error: dict[str, object] = body["error"]
    return error


def metric(http: httpx2.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def start(tmp_path: Path, models_dir: Path, data_dir: Path, **env: str) -> Server:
    environment = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(data_dir),
        "STEWARD_LOG_MAX_PENDING": str(MAX_PENDING),
        "STEWARD_LOG_WAIT_SECONDS": "0.2",
        "STEWARD_REQUIRED_MODELS": "iris",
        **env,
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    server = Server(argv, port=port, env=environment, log=tmp_path / "server.log")
    server.wait_ready("/readyz")
    return server


def outage_and_recovery(
    server: Server,
    break_store: Callable[[], object],
    restore_store: Callable[[], object],
    updates_refused: bool = True,
) -> Traffic:
    """The scripted sequence every store failure goes through; the clients' traffic.
    ``updates_refused``: feedback on a row already written is refused too (not where only new
    pages are, as with a size cap: the label fits in the row's page)."""
    traffic = Traffic()
    with httpx2.Client(base_url=server.url, timeout=30) as http:
        for _ in range(5):
            assert traffic.predict(http).status_code == 200
        written = traffic.acknowledged[0]
        assert wait_until(lambda: metric(http, "steward_prediction_log_pending_rows") == 0)
        break_store()

        served = traffic.until_refused(http)
        assert 0 < served <= MAX_PENDING  # served while the buffer had room, not beyond
        pending = traffic.acknowledged[-1]  # acknowledged, not yet written

        ready = http.get("/readyz")
        error = assert_store_unavailable(ready, "not_ready")
        assert "store" in [d["component"] for d in error["details"]]  # type: ignore[attr-defined]
        for prediction_id in (pending, written) if updates_refused else (pending,):
            feedback = {"prediction_id": prediction_id, "ground_truth": "setosa"}
            assert_store_unavailable(http.post("/feedback", json=feedback), "store_unavailable")

        restored = time.monotonic()
        restore_store()
        assert wait_until(lambda: http.get("/readyz").status_code == 200, seconds=30)
        ready_after = time.monotonic() - restored
        assert wait_until(lambda: metric(http, "steward_prediction_log_pending_rows") == 0)
        drained_after = time.monotonic() - restored
        print(
            f"\n{served} rows served into the buffer while down; ready {ready_after:.2f} s, "
            f"backlog written {drained_after:.2f} s after the store came back"
        )

        assert traffic.predict(http).status_code == 200
        feedback = {"prediction_id": pending, "ground_truth": "setosa"}
        assert http.post("/feedback", json=feedback).json()["status"] == "accepted"
        assert metric(http, "steward_prediction_log_dropped_rows_total") == 0
        refusals = metric(http, "steward_errors_total", model="iris", stage="store")
        assert refusals == traffic.refused
    return traffic


def stop(server: Server) -> str:
    assert server.stop(timeout=30) in (0, -15)
    output = server.log.read_text()
    assert "unwritten" not in output, output
    return output


def test_a_folder_turned_read_only_refuses_then_writes_every_row(
    tmp_path: Path, models_dir: Path
) -> None:
    data = tmp_path / "data"
    server = start(tmp_path, models_dir, data)
    try:
        with contextlib.ExitStack() as read_only:
            # A read-only file system over the folder: what root cannot write through (chmod
            # does not stop root, and a mount cannot turn read-only under open files).
            traffic = outage_and_recovery(
                server,
                lambda: read_only.enter_context(mounted(data, "ro")),
                read_only.close,
            )
    finally:
        output = stop(server)
    assert "cannot be rebuilt here" in output
    assert {row["id"] for row in stored_rows(data)} == set(traffic.acknowledged)


def run(*argv: str | Path, ok: tuple[int, ...] = (0,)) -> None:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if done.returncode not in ok:
        pytest.skip(f"{argv[0]} failed here: {done.stderr.strip()}")


def test_the_file_system_under_the_open_file_turned_read_only_then_back(
    tmp_path: Path, models_dir: Path
) -> None:
    """The data folder on its own ext4 volume that turns read-only under the open file, as the
    kernel does on an I/O error (errors=remount-ro): ``mount -o remount,abort``. (A plain
    ``remount,ro`` is refused while files are open for writing, and a read-only bind mount
    does not stop writes through the descriptors already open.) The operator's way back:
    unmount, fsck, mount again at the same place; meanwhile the store makes nothing under the
    mount point (it once rebuilt its file there, and the rows went under the volume)."""
    data, image = tmp_path / "data", tmp_path / "data.img"
    data.mkdir()
    with image.open("wb") as out:
        out.truncate(32 * 1024 * 1024)
    run("mkfs.ext4", "-q", "-F", image)
    run("mount", "-o", "loop", image, data)
    devices: list[str] = []
    try:
        server = start(tmp_path, models_dir, data)
        try:

            def turn_read_only() -> None:
                os.sync()
                run("mount", "-o", "remount,abort", data)
                probe = data / "probe"
                with pytest.raises(OSError, match="Read-only file system"):  # as root too
                    probe.write_text("x")

            def back() -> None:
                run("umount", "-l", data)  # the server's open files keep the old volume alive
                # The bare mount point while the volume is repaired: the store waits for it and
                # makes no file here (rows written under it would vanish at the mount).
                with httpx2.Client(base_url=server.url, timeout=30) as http:
                    error = assert_store_unavailable(http.get("/readyz"), "not_ready")
                assert "is not mounted: waiting for it" in str(error["details"])
                assert not (data / "steward.db").exists()
                run("e2fsck", "-fy", image, ok=(0, 1))
                # A loop device of its own: `mount -o loop` would reuse the aborted one.
                device = subprocess.run(
                    ["losetup", "-f", "--show", str(image)], capture_output=True, text=True
                ).stdout.strip()
                devices.append(device)
                run("mount", device, data)

            traffic = outage_and_recovery(server, turn_read_only, back)
        finally:
            output = stop(server)
        assert "replaced by another file" in output
        assert {row["id"] for row in stored_rows(data)} == set(traffic.acknowledged)
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
        for device in devices:
            subprocess.run(["losetup", "-d", device], capture_output=True)


def test_a_removed_sqlite_file_is_rebuilt_with_every_row(tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    traffic = Traffic()
    with serving(
        [STEWARD, "serve", "--port", str(port := free_port())],
        port=port,
        env=os.environ | {"STEWARD_MODELS_DIR": str(models_dir), "STEWARD_DATA_DIR": str(data)},
        log=tmp_path / "server.log",
        ready="/readyz",
    ) as server:
        with httpx2.Client(base_url=server.url, timeout=30) as http:
            for _ in range(20):
                assert traffic.predict(http).status_code == 200
            assert wait_until(lambda: metric(http, "steward_prediction_log_pending_rows") == 0)
            before = (data / "steward.db").stat().st_ino
            for name in ("steward.db", "steward.db-wal", "steward.db-shm"):
                (data / name).unlink()  # `rm steward.db*` while serving
            for _ in range(20):
                assert traffic.predict(http).status_code == 200
            assert http.get("/readyz").status_code == 200
            assert wait_until(lambda: metric(http, "steward_prediction_log_pending_rows") == 0)
            feedback = {"prediction_id": traffic.acknowledged[0], "ground_truth": "setosa"}
            assert http.post("/feedback", json=feedback).json()["status"] == "accepted"
            assert metric(http, "steward_prediction_log_dropped_rows_total") == 0
        output = stop(server)
    assert "is no longer at its path" in output
    assert (data / "steward.db").stat().st_ino != before
    rows = stored_rows(data)
    assert [row["id"] for row in rows if row["ground_truth"]] == [traffic.acknowledged[0]]
    assert {row["id"] for row in rows} == set(traffic.acknowledged)
    assert len(traffic.acknowledged) == 40 * ROWS


def test_a_full_disk_refuses_then_writes_every_row(tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    filler = data / "filler"
    with mounted(data):
        server = start(tmp_path, models_dir, data)
        try:

            def fill() -> None:
                with contextlib.suppress(OSError), filler.open("wb") as out:
                    for _ in range(64 * 1024):  # at most 64 MiB, more than the file system
                        out.write(b"\0" * 1024)
                        out.flush()

            traffic = outage_and_recovery(server, fill, filler.unlink)
        finally:
            output = stop(server)
        assert "full" in output
        assert {row["id"] for row in stored_rows(data)} == set(traffic.acknowledged)


SIZE_CAP = """\
# Test-only (tests/test_faults_store.py): every SQLite connection the server checks out is capped
# at the page count written in STEWARD_TEST_MAX_PAGES_FILE, as a full disk would cap it.
import os
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine


def _cap(dbapi_connection, _record, _proxy):
    if type(dbapi_connection).__module__ == "sqlite3":
        pages = int(Path(os.environ["STEWARD_TEST_MAX_PAGES_FILE"]).read_text())
        dbapi_connection.execute(f"PRAGMA max_page_count={pages}").fetchall()


event.listen(Engine, "checkout", _cap)
"""


def test_a_size_capped_store_refuses_then_writes_every_row(
    tmp_path: Path, models_dir: Path
) -> None:
    """The disk-full case where no file system can be mounted: SQLite's max_page_count caps the
    file (set from the test through a sitecustomize module only the test puts on the path)."""
    data = tmp_path / "data"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SIZE_CAP)
    pages = tmp_path / "max_pages"
    pages.write_text("1073741823")
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
        "STEWARD_TEST_MAX_PAGES_FILE": str(pages),
    }
    server = start(tmp_path, models_dir, data, **env)
    try:
        # Capped at 1 page: SQLite keeps the file at the size it has, so the writes that need a
        # new page are refused "database or disk is full"; then the cap is lifted.
        traffic = outage_and_recovery(
            server,
            lambda: pages.write_text("1"),
            lambda: pages.write_text("1073741823"),
            updates_refused=False,
        )
    finally:
        output = stop(server)
    assert "full" in output
    assert {row["id"] for row in stored_rows(data)} == set(traffic.acknowledged)


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own on the test PostgreSQL; its name. Dropped afterwards."""
    with postgres_database("steward_faults") as name:
        yield name


def sql(statement: str) -> None:
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(statement)


def cut(name: str) -> None:
    sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")


def stored_ids(name: str) -> set[str]:
    with psycopg.connect(postgres_dsn(name)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM predictions")}


def test_postgresql_connections_cut_under_load_lose_nothing(
    tmp_path: Path, models_dir: Path, database: str
) -> None:
    server = start(
        tmp_path, models_dir, tmp_path / "data", STEWARD_DATABASE_URL=postgres_url(database)
    )
    traffic = Traffic()
    try:
        with httpx2.Client(base_url=server.url, timeout=30) as http:
            for _ in range(10):
                for _ in range(10):
                    traffic.predict(http)
                cut(database)  # every backend of the server, mid-load
            assert wait_until(lambda: http.get("/readyz").status_code == 200)
            assert wait_until(lambda: metric(http, "steward_prediction_log_pending_rows") == 0)
            assert metric(http, "steward_prediction_log_dropped_rows_total") == 0
            assert metric(http, "steward_errors_total", model="iris", stage="store") == (
                traffic.refused
            )
    finally:
        stop(server)
    print(f"\n10 cuts: {traffic.refused} of 100 requests refused with 503, none lost")
    assert len(traffic.acknowledged) + traffic.refused * ROWS == 100 * ROWS
    assert stored_ids(database) == set(traffic.acknowledged)


def test_postgresql_refusing_connections_then_back_writes_every_row(
    tmp_path: Path, models_dir: Path, database: str
) -> None:
    server = start(
        tmp_path, models_dir, tmp_path / "data", STEWARD_DATABASE_URL=postgres_url(database)
    )

    def refuse() -> None:
        sql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        cut(database)

    try:
        traffic = outage_and_recovery(
            server, refuse, lambda: sql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        )
    finally:
        stop(server)
    assert stored_ids(database) == set(traffic.acknowledged)
