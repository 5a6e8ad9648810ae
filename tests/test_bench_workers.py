"""``bench/run.py --workers-only``, run for real and tiny (one round of 1 s cells): the table has
its shape, says how the load was pinned, and has no failed request. Speed is the bench's to
measure, never asserted here."""

import os
import re
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).parent.parent / "bench" / "run.py"


def test_workers_only_prints_one_and_two_workers_and_their_ratio() -> None:
    argv = [sys.executable, str(RUN), "--workers-only", "--seconds", "1", "--rounds", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: "), done.stdout
    cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    assert lines[1] == (
        "workers, iris at 64 connections, median of 1 interleaved rounds of 1 s; "
        f"server and wrk both on cpus {cpus} (not pinned apart):"
    )
    assert re.fullmatch(r"\| workers \| +req/s \| p50 ms \| p99 ms \| err \|", lines[2]), lines[2]
    assert re.fullmatch(r"\|-+\|-+\|-+\|-+\|-+\|", lines[3]), lines[3]
    number = r"[0-9][0-9,]*(\.[0-9]{2})?"
    for line, workers in zip(lines[4:6], ("1", "2"), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == workers, line
        assert all(re.fullmatch(number, c) for c in cells[1:4]), line
        assert cells[4] == "0", line  # no failed request
    assert re.fullmatch(r"2 workers ÷ 1: [0-9]+\.[0-9]{2}x the req/s \(target: at least 1\.7x\)",
                        lines[6]), lines[6]  # fmt: skip
    assert len(lines) == 7, done.stdout
