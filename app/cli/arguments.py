"""The types of ``steward``'s argument values: a bad value is a usage error naming the rule."""

import argparse
import math
import urllib.parse
from datetime import datetime
from pathlib import Path

from app.artifacts import NAME_PATTERN
from app.settings import MAX_WORKERS


def model_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise argparse.ArgumentTypeError(
            "a model name is 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )
    return value


def version_number(value: str) -> int:
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise argparse.ArgumentTypeError(
            "a version is a whole number from 1 (`steward models` lists them)"
        )
    return int(value)


def percent(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not (math.isfinite(share) and 0 <= share <= 100):
        raise argparse.ArgumentTypeError("a percent is a number from 0 to 100")
    return share


def label_count(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 1_000_000_000):
        raise argparse.ArgumentTypeError("a label count is a whole number from 1 to 1000000000")
    return int(value)


def margin(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not (math.isfinite(share) and 0 <= share <= 1):
        raise argparse.ArgumentTypeError("a margin is a number from 0 to 1")
    return share


def port(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 65535):
        raise argparse.ArgumentTypeError("a port is a whole number from 1 to 65535")
    return int(value)


def worker_count(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_WORKERS):
        raise argparse.ArgumentTypeError(
            f"a worker count is a whole number from 1 to {MAX_WORKERS}"
        )
    return int(value)


def url(value: str) -> str:
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:  # "http://[::1": else argparse names this function and echoes the value
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError("a URL is http://HOST:PORT (or https://)")
    return value


def input_file(value: str) -> Path:
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {value}")
    return path


def iso_date(value: str) -> datetime:
    """A retraining's --since: a date or date-time in ISO 8601, in UTC (one without a zone is
    UTC), not in the future."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "a date is ISO 8601: 2026-06-01, or 2026-06-01T12:00:00+00:00"
        ) from None
    from app.retraining_data import feedback_since

    try:
        return feedback_since(when)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
