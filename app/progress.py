"""Progress of long steps (a retraining's: loading feedback, the search, the fit, the
evaluation), behind one small interface: ``progress.step(name, total, unit)`` is a context
holding the step, ``advance(n)`` counts its work, ``expect(total)`` sets its total once known.

Three reporters:

- ``Silent``: nothing; the default of library calls (``retrain(..., progress=SILENT)``).
- ``Bar``: one tqdm bar per step, on a terminal; left on screen when the step ends.
- ``Lines``: plain lines, for output that is not a terminal (a log, a pipe, a job's stdout)::

      loading feedback: started
      loading feedback: 149 labelled rows
      search: 0/10 fits
      search: 10/60 fits
      fit: started
      fit: done
      evaluation: 1/2 sets (held_out)

  A step with a total reports when it starts, whenever its count passes a tenth of the total,
  and when it ends; ``every_tick`` reports each advance instead (a retrain job's stdout, whose
  latest line app/jobs.py keeps as the job's ``progress``). Each line is flushed.

A step that ends by an exception reports nothing more: the error says what happened.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Never, Protocol, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

DEFAULT_SIZE = (80, 24)
TENTHS = 10  # Lines reports a step with a total at most this many times between start and end


class Step(Protocol):
    """One step under way."""

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more units done; ``note`` names what was just done (e.g. the set scored)."""

    def expect(self, total: int) -> None:
        """The step's total, once it is known (or when it changes)."""


class Progress(Protocol):
    """Where steps report."""

    def step(
        self, name: str, total: int | None = None, unit: str = ""
    ) -> AbstractContextManager[Step]:
        """A step named ``name`` of ``total`` ``unit`` (None: not known yet, or no count)."""


class _Count:
    """A step's count, total and note: all Silent keeps, and what the others report."""

    def __init__(self, name: str, total: int | None, unit: str) -> None:
        self.name, self.total, self.unit = name, total, unit
        self.count = 0
        self.note: str | None = None

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.count += n
        self.note = note if note is not None else self.note
        self._advanced()

    def expect(self, total: int) -> None:
        self.total = total

    def _advanced(self) -> None:
        pass


class Silent:
    """Reports nothing."""

    @contextmanager
    def step(self, name: str, total: int | None = None, unit: str = "") -> Iterator[Step]:
        yield _Count(name, total, unit)


SILENT = Silent()


class _LineStep(_Count):
    def __init__(self, lines: "Lines", name: str, total: int | None, unit: str) -> None:
        super().__init__(name, total, unit)
        self._lines, self._stream, self._every_tick = lines, lines.stream, lines.every_tick
        self._reported: str | None = None
        self._tenth = 0

    def start(self) -> None:
        self._report(self.line() if self.total is not None else f"{self.name}: started")

    def finish(self) -> None:
        line = self.line()
        if line != self._reported:
            self._report(line)

    def line(self) -> str:
        if self.total is not None:
            text = f"{self.name}: {self.count}/{self.total} {self.unit}".rstrip()
        elif self.count or self.unit:
            text = f"{self.name}: {self.count} {self.unit}".rstrip()
        else:
            text = f"{self.name}: done"
        return f"{text} ({self.note})" if self.note else text

    def expect(self, total: int) -> None:
        super().expect(total)
        self._tenth = self._tenths()  # the next line at the next tenth of the new total

    def _tenths(self) -> int:
        return min(self.count * TENTHS // self.total, TENTHS) if self.total else 0

    def _advanced(self) -> None:
        if self._every_tick:
            self._report(self.line())
            return
        tenth = self._tenths()
        if tenth > self._tenth:
            self._tenth = tenth
            self._report(self.line())

    def _report(self, line: str) -> None:
        self._reported = line
        if self._lines.gone:
            return
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except BrokenPipeError:  # the reader left (`| head -3`): the retraining goes on
            self._lines.gone = True


class Lines:
    """Plain lines on ``stream``: at the start, each tenth and the end of a step (or at each
    advance, ``every_tick``). A reader that leaves ends the lines, not the work."""

    def __init__(self, stream: TextIO, *, every_tick: bool = False) -> None:
        self.stream, self.every_tick = stream, every_tick
        self.gone = False  # the reader closed the pipe: no more lines, no error

    @contextmanager
    def step(self, name: str, total: int | None = None, unit: str = "") -> Iterator[Step]:
        line = _LineStep(self, name, total, unit)
        line.start()
        yield line
        line.finish()


class _BarStep(_Count):
    def __init__(self, bar: "tqdm[Never]", name: str, total: int | None, unit: str) -> None:
        super().__init__(name, total, unit)
        self._bar = bar

    def _advanced(self) -> None:
        self._bar.update(self.count - self._bar.n)
        if self.note is not None:
            self._bar.set_postfix_str(self.note, refresh=True)

    def expect(self, total: int) -> None:
        super().expect(total)
        self._bar.total = total
        self._bar.refresh()


class Bar:
    """A tqdm bar per step on ``stream`` (a terminal), left on screen when the step ends."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    @contextmanager
    def step(self, name: str, total: int | None = None, unit: str = "") -> Iterator[Step]:
        from tqdm import tqdm  # only on a terminal: a pipe or a job never imports it

        columns, lines = _size(self._stream)
        # Without a total a bar has nothing to fill: the name, the count and the time taken.
        counted = "{desc}: {n_fmt} " + unit if unit else "{desc}:"
        with tqdm(
            total=total,
            desc=name,
            unit=f" {unit}" if unit else "it",
            file=self._stream,
            ncols=columns,
            nrows=lines,
            leave=True,
            bar_format=None if total is not None else counted + " [{elapsed}]{postfix}",
        ) as bar:
            step = _BarStep(bar, name, total, unit)
            yield step
            if total is None and not unit:
                bar.set_postfix_str("done", refresh=True)


def _size(stream: TextIO) -> tuple[int, int]:
    """The terminal's columns and lines; 80 x 24 where it reports 0 (a pseudo-terminal never
    sized, where tqdm would draw nothing)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        return DEFAULT_SIZE
    return size.columns or DEFAULT_SIZE[0], size.lines or DEFAULT_SIZE[1]


def for_terminal() -> Progress:
    """The CLI's reporter: bars on stderr when it is a terminal (stdout keeps the command's
    report, a pipe or a file stays clean of them), plain lines on stdout otherwise."""
    if sys.stderr.isatty():
        return Bar(sys.stderr)
    return Lines(sys.stdout)
