"""The CPUs of a benchmark run: which core the server gets and which the load generator gets,
and how much CPU time a server process spent, from the kernel's own accounting.

CPU time per request (utime + stime over a run, divided by the requests completed) holds up on
a shared machine where requests per second and latency do not: another process on the core
slows the server down, but it does not make the server's own work cost more CPU time.
Standard library only, Linux only (``/proc``).
"""

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Pinning:
    """The cores to run the server and the load generator on (taskset's ``-c`` lists), or
    ``None`` for both when there are fewer than two cores to choose from."""

    server: str | None
    load: str | None

    @property
    def described(self) -> str:
        if self.server is None:
            return "not pinned: 1 cpu"
        return f"server pinned to cpu {self.server}, wrk to cpu {self.load}"

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command on the server's core (taskset execs it: the
        process keeps taskset's pid)."""
        return [] if self.server is None else ["taskset", "-c", self.server]


def pinning() -> Pinning:
    """The first two cores this process may run on; no pinning with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(None, None)
    return Pinning(str(cpus[0]), str(cpus[1]))


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/<pid>/stat`` this module reads; times in clock ticks."""

    pid: int
    ppid: int
    utime: int  # user time of the process (all its threads)
    stime: int  # system time of the process
    cutime: int  # user time of its children that it has waited for
    cstime: int  # system time of its children that it has waited for


def parse_stat(text: str) -> Stat:
    """One ``/proc/<pid>/stat`` line. The command name (field 2, in parentheses) may hold
    spaces and parentheses itself, so the fields after it are counted from its last ``)``."""
    pid, _, rest = text.partition(" (")
    fields = rest[rest.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return Stat(
        pid=int(pid),
        ppid=int(fields[1]),  # field 4
        utime=int(fields[11]),  # field 14
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def read_stat(pid: int) -> Stat:
    return parse_stat((PROC / str(pid) / "stat").read_text())


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid``, its live descendants, and the children
    they have waited for. Raises FileNotFoundError if ``pid`` is gone."""
    stats = [read_stat(pid), *(read_stat(p) for p in descendants(pid))]
    ticks = sum(s.utime + s.stime + s.cutime + s.cstime for s in stats)
    return ticks / TICKS_PER_SECOND


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid``: children, their children, and so on."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = read_stat(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):  # ended while we looked
            continue
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found
