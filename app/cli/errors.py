"""The CLI's own error, and what it does when its reader leaves; app/cli/__init__.py renders
the error (one line, exit status 2)."""

import os
import sys


class UsageError(Exception):
    """The command line is wrong: reported in one line, exit status 2."""


def reader_left() -> None:
    """stdout's reader left (``steward versions iris | head -1``): stdout goes nowhere from now
    on, so later output and the interpreter's last flush have nowhere to fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
