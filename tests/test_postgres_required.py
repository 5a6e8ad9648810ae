"""The PostgreSQL half of the suite cannot pass by not running: with
STEWARD_TEST_POSTGRES_REQUIRED set (as .ci/run sets it), a test whose PostgreSQL is unreachable
fails with one line saying so; unset, it skips (a laptop without PostgreSQL)."""

import os
import subprocess
import sys

import pytest

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/test"  # port 1: nothing listens
TEST = "tests/test_store.py::test_empty_calls[postgresql]"


def run_test(required: str | None) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"STEWARD_TEST_POSTGRES": UNREACHABLE}
    env.pop("STEWARD_TEST_POSTGRES_REQUIRED", None)
    if required is not None:
        env["STEWARD_TEST_POSTGRES_REQUIRED"] = required
    return subprocess.run(
        [sys.executable, "-m", "pytest", TEST, "-q", "-rs", "-p", "no:cacheprovider"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_unreachable_postgresql_fails_the_test_when_required() -> None:
    run = run_test("1")
    assert run.returncode == 1, run.stdout
    reasons = [line for line in run.stdout.splitlines() if line.startswith("no PostgreSQL")]
    assert len(reasons) == 1, run.stdout  # one line: no traceback, no chained exception
    assert reasons[0].startswith(f"no PostgreSQL at {UNREACHABLE}: connection failed: ")
    assert "Connection refused" in reasons[0]
    assert reasons[0].endswith(" (STEWARD_TEST_POSTGRES_REQUIRED is set)")
    assert "Traceback" not in run.stdout
    assert run.stdout.splitlines()[-1].startswith("1 error in ")


@pytest.mark.parametrize("required", [None, "", "0"])
def test_an_unreachable_postgresql_skips_the_test_otherwise(required: str | None) -> None:
    run = run_test(required)
    assert run.returncode == 0, run.stdout
    assert "SKIPPED [1] tests/test_store.py" in run.stdout
    assert f"no PostgreSQL at {UNREACHABLE}: " in run.stdout
    assert "1 skipped in " in run.stdout
