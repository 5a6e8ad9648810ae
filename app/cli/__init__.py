"""``steward``: parse arguments, call one function, print.

Every error is one line on stderr, ``steward: error: ...``. Exit status: 0 done, 1 the command
failed, 2 the command line is wrong (the line points to ``--help``).

A command imports the heavy parts it needs when it runs (training: scikit-learn and pandas;
serve: the server), so ``--help``, ``--version`` and ``models`` answer at once
(tests/test_imports.py holds them to it).

Here: the entry point and the error handling. The parser's root is in parser.py, the argument
types in arguments.py; each command, its options and its output in the module named for it.
"""

import argparse
import sys
import traceback
from collections.abc import Sequence

from app.cli import lifecycle_commands, registry_commands, server_commands, versions
from app.cli.errors import UsageError, reader_left
from app.cli.lifecycle_commands import SWAP_NOTE, TRAFFIC_NOTE
from app.cli.parser import root_parser
from app.errors import StewardError
from app.settings import Settings, load_settings

__all__ = ["SWAP_NOTE", "TRAFFIC_NOTE", "UsageError", "main", "run"]

USAGE_ERROR = 2
INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)
MAX_MESSAGE = 1000  # characters of an error line: a pasted megabyte stays off the terminal


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    settings: Settings | None = None
    try:
        args = _parser().parse_args(argv)
        if not hasattr(args, "command"):
            raise UsageError("no command given (see `steward --help`)")
        settings = load_settings(**({"models_dir": args.models_dir} if args.models_dir else {}))
        result: int = args.command(args, settings)
        return result
    except SystemExit as exc:  # --help and --version after printing; uvicorn if it cannot bind
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except UsageError as exc:
        _fail(str(exc))
        return USAGE_ERROR
    except KeyboardInterrupt:  # Ctrl-C before a command took the signal over: no traceback
        _fail("interrupted")
        return INTERRUPTED
    except BrokenPipeError:  # the reader left (`steward versions iris | head -1`): done
        reader_left()
        return 0
    except (StewardError, OSError) as exc:
        _fail(str(exc))
    except Exception as exc:  # a bug: still one line; the traceback at STEWARD_LOG_LEVEL=debug
        if settings is not None and settings.log_level == "debug":
            traceback.print_exc()
        _fail(f"unexpected {type(exc).__name__}: {exc}")
    return 1


def _parser() -> argparse.ArgumentParser:
    """The whole tree, its commands in the order ``steward --help`` lists them."""
    parser, commands = root_parser()
    for module in (registry_commands, lifecycle_commands, versions, server_commands):
        module.add_commands(commands)
    return parser


def _fail(message: str) -> None:
    line = " ".join(message.split())  # a driver's message may span lines
    if len(line) > MAX_MESSAGE:
        line = line[:MAX_MESSAGE] + "..."
    print(f"steward: error: {line}", file=sys.stderr)
