"""The CLI's own error; app/cli/__init__.py renders it (one line, exit status 2)."""


class UsageError(Exception):
    """The command line is wrong: reported in one line, exit status 2."""
