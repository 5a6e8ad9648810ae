"""bench/cpu.py reads the kernel's CPU accounting right: /proc/<pid>/stat of real processes,
their live descendants and the children they waited for. It compares CPU-time counters with
each other (the kernel's against the processes' own), never with a wall clock."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from cpu import TICKS_PER_SECOND, cpu_seconds, descendants, pinning, read_stat

BURN = 0.3  # CPU seconds each child spends
TICK = 1 / TICKS_PER_SECOND

# A parent that runs one child to its end (waited for: its CPU time lands in the parent's
# cutime), then starts another that stays alive; each child prints the CPU time it spent.
PARENT = textwrap.dedent(f"""
    import subprocess, sys, time
    burn = (
        "import time\\n"
        "while time.process_time() < {BURN}: pass\\n"
        "print(time.process_time(), flush=True)\\n"
    )
    subprocess.run([sys.executable, "-c", burn], check=True)
    live = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(60)"])
    print(live.pid, flush=True)
    time.sleep(60)
""")


def test_stat_of_this_process_matches_its_own_counters() -> None:
    before = os.times()
    stat = read_stat(os.getpid())
    after = os.times()
    assert (stat.pid, stat.ppid) == (os.getpid(), os.getppid())
    assert before.user - TICK <= stat.utime / TICKS_PER_SECOND <= after.user + TICK
    assert before.system - TICK <= stat.stime / TICKS_PER_SECOND <= after.system + TICK


def test_cpu_seconds_counts_live_and_waited_for_children(tmp_path: Path) -> None:
    """The parent's command name holds spaces and parentheses (the kernel names a process after
    the file it runs: here a link to this Python), which the stat line does not quote."""
    odd = tmp_path / "a) b (c"
    odd.symlink_to(sys.executable)
    parent = subprocess.Popen(
        [odd, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    with parent:  # closes its stdout and waits for it on the way out
        try:
            check_parent(parent)
        finally:
            os.killpg(parent.pid, signal.SIGKILL)


def check_parent(parent: "subprocess.Popen[str]") -> None:
    assert parent.stdout is not None
    waited_for = float(parent.stdout.readline())
    live_pid = int(parent.stdout.readline())
    live = float(parent.stdout.readline())
    assert Path(f"/proc/{parent.pid}/comm").read_text().strip() == "a) b (c"
    stat = read_stat(parent.pid)
    assert (stat.pid, stat.ppid) == (parent.pid, os.getpid())
    # Each of cutime and cstime is rounded down to a tick: their sum, by up to two.
    assert stat.cutime + stat.cstime >= (waited_for - 2 * TICK) * TICKS_PER_SECOND
    assert descendants(parent.pid) == [live_pid]
    assert cpu_seconds(parent.pid) >= waited_for + live - 4 * TICK  # two sums of two


def test_pinning_names_two_distinct_cores_or_none() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    pinned = pinning()
    if len(cpus) >= 2:
        assert (pinned.server, pinned.load) == (str(cpus[0]), str(cpus[1]))
        assert pinned.prefix() == ["taskset", "-c", str(cpus[0])]
        assert pinned.described == f"server pinned to cpu {cpus[0]}, wrk to cpu {cpus[1]}"
    else:
        assert (pinned.server, pinned.load, pinned.prefix()) == (None, None, [])
        assert pinned.described == "not pinned: 1 cpu"
