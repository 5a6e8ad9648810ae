"""The root of ``steward``'s argument parser, and the helpers each command module adds its
commands with (app/cli/*_commands.py, app/cli/versions.py)."""

import argparse
from pathlib import Path
from typing import NoReturn, TypeAlias

from app import __version__
from app.cli import arguments
from app.cli.errors import UsageError

DESCRIPTION = """\
Steward serves scikit-learn models over HTTP and tracks, while they serve, whether they are
right: it joins the ground truth clients send later to the predictions it made, and exports
accuracy, latency and errors to Prometheus.

This command trains, registers and retrains model versions into the registry (a folder), lists
them, points aliases at them and rolls them back (or lets the server roll a worse promote back by
itself), sets the traffic policy between production and candidate, starts the server, and asks it
what it serves."""

EPILOG = """\
examples:
  steward train demo                  train three demo models into ./models
  steward serve                       serve every model on http://127.0.0.1:8000
  steward train --csv churn.csv --target churned --name churn
  steward register model.joblib --name churn --sample inputs.csv --target churned
  steward promote churn 2             point production at version 2
  steward rollback churn              production back to the version before
  steward traffic churn shadow        the candidate also predicts every request
  steward traffic churn canary --percent 10
  steward auto-rollback churn on      roll a promote back by itself if it does worse live
  steward versions churn              every version: metrics, aliases, alias history
  steward retrain churn --candidate   retrain on the feedback; candidate if the gate passes it
  steward status                      what the running server serves

settings come from STEWARD_* environment variables (STEWARD_MODELS_DIR, STEWARD_DATA_DIR,
STEWARD_DATABASE_URL, STEWARD_HOST, STEWARD_PORT, ...: see docs/operations.md); --models-dir,
before or after the command, overrides STEWARD_MODELS_DIR.

exit status: 0 done, 1 the command failed, 2 the command line is wrong.
Run `steward COMMAND --help` for a command's options."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line pointing to --help, instead of argparse's usage block and exit."""
        raise UsageError(f"{message} (see `{self.prog} --help`)")


Commands: TypeAlias = "argparse._SubParsersAction[Parser]"
"""Where the command modules add their commands."""


def root_parser() -> tuple[argparse.ArgumentParser, Commands]:
    """``steward`` itself (--version, --models-dir), and its still empty set of commands."""
    parser = Parser(
        prog="steward",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"steward {__version__}",
        help="print steward's version and exit",
    )
    _models_dir_option(parser, default=None)
    return parser, parser.add_subparsers(title="commands", metavar="COMMAND")


def add_command(
    commands: Commands,
    name: str,
    summary: str,
    description: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A command: its one-line ``summary`` in ``steward --help``, the rest in its own --help."""
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # SUPPRESS: the option after the command wins only when given, else the one before it stays.
    _models_dir_option(parser, default=argparse.SUPPRESS)
    return parser


def _models_dir_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--models-dir",
        type=Path,
        metavar="DIR",
        default=default,
        help="registry root (default: STEWARD_MODELS_DIR or ./models)",
    )


def model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=arguments.model_name, metavar="MODEL", help="model name")


def promote_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--promote", action="store_true", help="make the new version production")
