"""``steward``: parse arguments, call one function, print.

Every error is one line on stderr, ``steward: error: ...``. Exit status: 0 done, 1 the command
failed, 2 the command line is wrong (the line points to ``--help``).

A command imports the heavy parts it needs when it runs (training: scikit-learn and pandas;
serve: the server), so ``--help``, ``--version`` and ``models`` answer at once
(tests/test_imports.py holds them to it).
"""

import argparse
import contextlib
import logging
import math
import os
import socket
import sys
import traceback
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from app import __version__, lifecycle, status
from app.artifacts import (
    ALIAS_NAMES,
    NAME_PATTERN,
    AliasChange,
    ModelMetadata,
    TrafficPolicy,
    list_models,
    list_versions,
    read_aliases,
    read_metadata,
)
from app.errors import ArtifactError, StewardError, StoreUnavailable
from app.settings import Settings, load_settings

if TYPE_CHECKING:
    from app.schemas import PairedQuality, VersionQuality

USAGE_ERROR = 2
MAX_MESSAGE = 1000  # characters of an error line: a pasted megabyte stays off the terminal

DESCRIPTION = """\
Steward serves scikit-learn models over HTTP and tracks, while they serve, whether they are
right: it joins the ground truth clients send later to the predictions it made, and exports
accuracy, latency and errors to Prometheus.

This command trains and registers model versions into the registry (a folder), lists them,
points aliases at them and rolls them back, sets the traffic policy between production and
candidate, starts the server, and asks it what it serves."""

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
  steward versions churn              every version: metrics, aliases, alias history
  steward status                      what the running server serves

settings come from STEWARD_* environment variables (STEWARD_MODELS_DIR, STEWARD_DATA_DIR,
STEWARD_DATABASE_URL, STEWARD_HOST, STEWARD_PORT, ...: see docs/operations.md); --models-dir,
before or after the command, overrides STEWARD_MODELS_DIR.

exit status: 0 done, 1 the command failed, 2 the command line is wrong.
Run `steward COMMAND --help` for a command's options."""


class UsageError(Exception):
    """The command line is wrong: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line pointing to --help, instead of argparse's usage block and exit."""
        raise UsageError(f"{message} (see `{self.prog} --help`)")


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
    except BrokenPipeError:  # the reader left (`steward versions iris | head -1`): done
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush has nowhere to fail
        return 0
    except (StewardError, OSError) as exc:
        _fail(str(exc))
    except Exception as exc:  # a bug: still one line; the traceback at STEWARD_LOG_LEVEL=debug
        if settings is not None and settings.log_level == "debug":
            traceback.print_exc()
        _fail(f"unexpected {type(exc).__name__}: {exc}")
    return 1


def _fail(message: str) -> None:
    line = " ".join(message.split())  # a driver's message may span lines
    if len(line) > MAX_MESSAGE:
        line = line[:MAX_MESSAGE] + "..."
    print(f"steward: error: {line}", file=sys.stderr)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from app import training

    if args.what == "demo":
        given = [
            flag
            for flag in ("csv", "target", "name", "task", "drop", "date")
            if getattr(args, flag)
        ]
        if given:
            options = ", ".join(f"--{flag}" for flag in given)
            raise UsageError(f"`train demo` takes no {options} (see `steward train --help`)")
        trained = training.train_demo(
            settings.models_dir, if_missing=args.if_missing, promote=args.promote
        )
        if not trained:
            print("demo models already present")
    else:
        missing = [flag for flag in ("csv", "target", "name") if not getattr(args, flag)]
        if missing:
            raise UsageError(
                f"train needs `demo`, or --csv, --target and --name (missing "
                f"{', '.join(f'--{flag}' for flag in missing)}; see `steward train --help`)"
            )
        trained = [
            training.train_csv(
                settings.models_dir,
                args.csv,
                args.target,
                args.name,
                args.task,
                promote=args.promote,
                drop=args.drop,
                dates=args.date,
            )
        ]
    for metadata in trained:
        _print_version(settings, metadata)
    return 0


def _register(args: argparse.Namespace, settings: Settings) -> int:
    from app import registration

    metadata = registration.register_estimator(
        settings.models_dir,
        args.artifact,
        args.name,
        args.sample,
        target=args.target,
        promote=args.promote,
    )
    _print_version(settings, metadata)
    return 0


def _models(_: argparse.Namespace, settings: Settings) -> int:
    names = list_models(settings.models_dir)
    if not names:
        print(f"no models in {settings.models_dir}")
        return 0
    rows = [("MODEL", "VERSIONS", "ALIASES")]
    for name in names:
        versions = ",".join(str(v) for v in list_versions(settings.models_dir, name))
        try:
            aliases = read_aliases(settings.models_dir, name)
        except ArtifactError:  # one model's bad file does not hide the others
            shown = "(aliases.json unreadable: `steward versions` says why)"
        else:
            shown = " ".join(f"{a}={v}" for a, v in sorted(aliases.items()))
        rows.append((name, versions, shown))
    _table(rows)
    return 0


# What a change on disk means for running servers (app/watcher.py).
SWAP_NOTE = "running servers swap to it within STEWARD_RELOAD_INTERVAL_SECONDS"
TRAFFIC_NOTE = "running servers apply it within STEWARD_RELOAD_INTERVAL_SECONDS"


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    state = lifecycle.promote(settings.models_dir, args.model, args.version, args.alias)
    if state.change is None:
        print(f"{args.model}: {args.alias} is already version {args.version}")
    else:
        print(f"{args.model}: {_change(state.change)}")
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    state = lifecycle.rollback(settings.models_dir, args.model)
    assert state.change is not None  # a roll-back always moves production
    print(f"{args.model}: rolled back, {_change(state.change)}")
    return 0


def _traffic(args: argparse.Namespace, settings: Settings) -> int:
    state = lifecycle.set_traffic(settings.models_dir, args.model, args.mode, args.percent)
    print(f"{args.model}: traffic {_policy(state.traffic)} ({TRAFFIC_NOTE})")
    return 0


def _policy(policy: TrafficPolicy) -> str:
    """A traffic policy in words, naming the candidate it was set for."""
    if policy.mode == "none":
        return "none (production answers every request)"
    to = f"candidate v{policy.candidate}"
    share = status.percent_text(policy.percent)
    if policy.mode == "shadow":
        return f"shadow: {to} also predicts {share} of requests, never answering"
    return f"canary: {to} answers {share} of requests"


def _change(change: AliasChange) -> str:
    was = "unset" if change.from_ is None else str(change.from_)
    return f"{change.alias} -> version {change.to} (was {was}; {SWAP_NOTE})"


def _versions(args: argparse.Namespace, settings: Settings) -> int:
    """Offline metrics and aliases per version with its live quality from the prediction store
    (app/quality.py): the rows it served, and, once any version predicted in shadow, the rows
    it shadowed; then champion vs challenger on the same labels; then the alias history."""
    report = lifecycle.describe(settings.models_dir, args.model)
    live = _live_quality(settings, args.model)
    served = {q.version: q for q in live[0] if q.role == "served"} if live else {}
    shadow = {q.version: q for q in live[0] if q.role == "shadow"} if live else {}
    head = ("VERSION", "CREATED", "TASK", "ALIASES", "OFFLINE METRICS", "LIVE (LABELLED)")
    rows = [(*head, "SHADOW (LABELLED)") if shadow else head]
    for v in report.versions:
        created = f"{v.created_at:%Y-%m-%d %H:%M}" if v.created_at else "-"
        scores = " ".join(f"{k}={x:.4g}" for k, x in v.metrics.items())
        detail = f"unreadable: {v.unreadable}" if v.unreadable else scores
        row = (
            str(v.version),
            created,
            v.task or "-",
            ",".join(v.aliases) or "-",
            detail,
            _live_cell(served.get(v.version) if live is not None else None),
        )
        rows.append((*row, _live_cell(shadow.get(v.version))) if shadow else row)
    _table(rows)
    if live is None:
        print("live quality: no prediction store yet (nothing served)")
    elif live[1]:
        print()
        _paired_table(live[1])
    print()
    set_by = report.traffic
    who = f" by {set_by.by}" if set_by.by else ""
    when = f" (set {set_by.at:%Y-%m-%d %H:%M:%S}Z{who})" if set_by.at else ""
    print(f"traffic: {_policy(report.traffic)}{when}")
    print()
    if not report.history:
        print("alias history: none yet")
        return 0
    history = [("AT", "ALIAS", "FROM", "TO", "BY", "ACTION")]
    for c in report.history:
        moved = "-" if c.from_ is None else str(c.from_)
        at = f"{c.at:%Y-%m-%d %H:%M:%S}Z"
        history.append((at, c.alias, moved, str(c.to), c.by, c.action))
    _table(history)
    return 0


def _live_quality(
    settings: Settings, name: str
) -> tuple[list["VersionQuality"], list["PairedQuality"]] | None:
    """Each version's live quality over STEWARD_QUALITY_WINDOW_SECONDS, served and in shadow,
    and each champion/challenger pair on the same labels, from the prediction store; None when
    the embedded SQLite store was never created (nothing to read, and a read command does not
    create one)."""
    from app import quality  # the store (SQLAlchemy) only for this command
    from app.store import open_store

    if settings.database_url is None and not (settings.data_dir / "steward.db").exists():
        return None
    metadata = {}
    for number in list_versions(settings.models_dir, name):
        with contextlib.suppress(ArtifactError):  # listed as unreadable by describe
            metadata[number] = read_metadata(settings.models_dir, name, number)
    store = open_store(settings.store_url)
    window = settings.quality_window_seconds
    try:
        return (
            quality.live_quality(store, name, metadata, window),
            quality.paired_quality(store, name, metadata, window),
        )
    finally:
        store.close()


def _paired_table(paired: Sequence["PairedQuality"]) -> None:
    """Champion (served) vs challenger (shadow), each scored on the rows labelled for both."""
    print("champion vs challenger on the same labels:")
    rows = [("CHAMPION", "CHALLENGER", "LABELLED", "CHAMPION LIVE", "CHALLENGER LIVE")]
    for p in paired:
        champion = (p.champion_accuracy, p.champion_mae, p.champion_rmse)
        challenger = (p.challenger_accuracy, p.challenger_mae, p.challenger_rmse)
        rows.append(
            (
                str(p.champion),
                str(p.challenger),
                str(p.labelled),
                _scores_cell(*champion),
                _scores_cell(*challenger),
            )
        )
    _table(rows)


def _scores_cell(accuracy: float | None, mae: float | None, rmse: float | None) -> str:
    named = (("accuracy", accuracy), ("mae", mae), ("rmse", rmse))
    return " ".join(f"{k}={x:.4g}" for k, x in named if x is not None) or "-"


def _live_cell(quality: "VersionQuality | None") -> str:
    if quality is None or quality.labelled == 0:
        return "-" if quality is None else f"- (0 of {quality.predictions})"
    labelled = f"({quality.labelled} of {quality.predictions})"
    scores = _scores_cell(quality.accuracy, quality.mae, quality.rmse)
    return labelled if scores == "-" else f"{scores} {labelled}"


def _status(args: argparse.Namespace, settings: Settings) -> int:
    url = args.url or status.server_url(settings.host, settings.port)
    if args.model is None:
        lines = status.render_models(status.fetch(url))
    else:
        lines = status.render_model(status.fetch(url, args.model))
    print("\n".join(lines))
    return 0


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.main import create_app
    from app.store import open_store

    # Pre-flight: what would fail in the server's start-up fails here, in one line.
    app = create_app(settings)  # refuses a models directory that is not there
    try:
        open_store(settings.store_url).close()
    except StoreUnavailable as exc:
        source = "STEWARD_DATABASE_URL" if settings.database_url else "STEWARD_DATA_DIR"
        raise StoreUnavailable(f"{exc} ({source})") from exc
    host, port = args.host or settings.host, args.port or settings.port
    _check_port_free(host, port)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        # Whole seconds for uvicorn, rounded up: 0.5 must not become "cancel requests at once".
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_seconds),
    )
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line, before the models load, when the address is taken or not ours."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise StewardError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (--host/--port, "
            "STEWARD_HOST/STEWARD_PORT)"
        ) from exc


def _print_version(settings: Settings, metadata: ModelMetadata) -> None:
    aliases = read_aliases(settings.models_dir, metadata.name)
    tags = [a for a, v in sorted(aliases.items()) if v == metadata.version]
    scores = " ".join(f"{k}={v:.4g}" for k, v in metadata.metrics.items())
    suffix = f" ({', '.join(tags)})" if tags else ""
    print(f"{metadata.name}: version {metadata.version}{suffix} {scores}".rstrip())


# --- argument types: a bad value is a usage error naming the rule -------------------------


def _model_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise argparse.ArgumentTypeError(
            "a model name is 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )
    return value


def _version(value: str) -> int:
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise argparse.ArgumentTypeError(
            "a version is a whole number from 1 (`steward models` lists them)"
        )
    return int(value)


def _percent(value: str) -> float:
    try:
        percent = float(value)
    except ValueError:
        percent = math.nan
    if not (math.isfinite(percent) and 0 <= percent <= 100):
        raise argparse.ArgumentTypeError("a percent is a number from 0 to 100")
    return percent


def _port(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 65535):
        raise argparse.ArgumentTypeError("a port is a whole number from 1 to 65535")
    return int(value)


def _url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError("a URL is http://HOST:PORT (or https://)")
    return value


def _input_file(value: str) -> Path:
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {value}")
    return path


# --- the parser ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    train = _command(
        commands,
        "train",
        "train the demo models, or a model from a CSV file",
        "Train a new version: the three demo models (iris, breast-cancer, diabetes) from data\n"
        "bundled with scikit-learn, or a default pipeline (impute, scale / one-hot, linear model)\n"
        "on a CSV file with a header row. Held-out metrics are printed and stored.",
        "examples:\n"
        "  steward train demo --if-missing\n"
        "  steward train --csv churn.csv --target churned --name churn\n"
        "  steward train --csv prices.csv --target price --name prices --task regression\n"
        "  steward train --csv crm.csv --target churned --name churn --drop customer_id "
        "--date signup",
    )
    train.add_argument("what", nargs="?", choices=["demo"], help="the bundled demo models")
    train.add_argument("--csv", type=_input_file, metavar="FILE", help="training data, with header")
    train.add_argument("--target", metavar="COLUMN", help="the column to predict")
    train.add_argument("--name", type=_model_name, help="model name (a-z, 0-9, '.', '_', '-')")
    train.add_argument(
        "--task",
        choices=["classification", "regression"],
        help="default: classification for text, booleans and few distinct integers",
    )
    train.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="COL",
        help="leave a column out (an identifier, say); repeat for more",
    )
    train.add_argument(
        "--date",
        action="append",
        default=[],
        metavar="COL",
        help="parse a column as dates: the model sees days since 1970; repeat for more",
    )
    train.add_argument("--if-missing", action="store_true", help="skip models already present")
    _promote_flag(train)
    train.set_defaults(command=_train)

    register = _command(
        commands,
        "register",
        "register a model trained elsewhere",
        "Register a fitted scikit-learn classifier or regressor, saved with joblib or pickle,\n"
        "as a new version. The feature schema comes from a CSV sample of its inputs, which the\n"
        "model must accept. With --target, the sample also holds the true answers in that\n"
        "column: it is left out of the features, and the model is scored on the sample.\n"
        "Unpickling runs code from the file: register only files you trust.",
        "examples:\n"
        "  steward register model.joblib --name churn --sample inputs.csv\n"
        "  steward register model.joblib --name churn --sample labelled.csv --target churned",
    )
    register.add_argument(
        "artifact", type=_input_file, metavar="MODEL.joblib", help="the fitted estimator's file"
    )
    register.add_argument("--name", type=_model_name, required=True, help="model name")
    register.add_argument(
        "--sample", type=_input_file, metavar="FILE", required=True, help="CSV of example inputs"
    )
    register.add_argument(
        "--target", metavar="COLUMN", help="the sample's column of true answers, if it has one"
    )
    _promote_flag(register)
    register.set_defaults(command=_register)

    models = _command(
        commands, "models", "list models, versions and aliases", "List the registry's models."
    )
    models.set_defaults(command=_models)

    promote = _command(
        commands,
        "promote",
        "point an alias at a version",
        "Point an alias (production by default) at a version, and add the change to the\n"
        "model's alias history (who, when, from, to). Running servers swap to it within\n"
        "STEWARD_RELOAD_INTERVAL_SECONDS, without a restart.",
        "examples:\n  steward promote iris 2\n  steward promote iris 3 --alias candidate",
    )
    _model_argument(promote)
    promote.add_argument("version", type=_version, metavar="VERSION", help="version number")
    promote.add_argument(
        "--alias", choices=ALIAS_NAMES, default="production", help="default: production"
    )
    promote.set_defaults(command=_promote)

    rollback = _command(
        commands,
        "rollback",
        "point production back at the version before",
        "Point production back at the version it pointed at before its latest promote; again,\n"
        "and it goes one further back. Recorded in the alias history. Running servers swap to\n"
        "it within STEWARD_RELOAD_INTERVAL_SECONDS, without a restart.",
        "examples:\n  steward rollback iris",
    )
    _model_argument(rollback)
    rollback.set_defaults(command=_rollback)

    traffic = _command(
        commands,
        "traffic",
        "set the traffic policy between production and candidate",
        "Set how a model's requests reach its candidate version: none (production answers\n"
        "everything), shadow (the candidate also predicts PERCENT of the requests, default\n"
        "100, off the response path, never answering) or canary (the candidate answers\n"
        "PERCENT of the requests; --percent required). Shadow and canary need a candidate\n"
        "other than production (`steward promote MODEL VERSION --alias candidate`); promoting\n"
        "production to the candidate's version sets the policy back to none. Running servers\n"
        "apply it within STEWARD_RELOAD_INTERVAL_SECONDS, without a restart.",
        "examples:\n"
        "  steward traffic iris shadow\n"
        "  steward traffic iris canary --percent 10\n"
        "  steward traffic iris none",
    )
    _model_argument(traffic)
    traffic.add_argument("mode", choices=lifecycle.TRAFFIC_MODES, help="the policy")
    traffic.add_argument(
        "--percent",
        type=_percent,
        metavar="P",
        help="share of requests, 0-100 (default: 100 for shadow, 0 for none)",
    )
    traffic.set_defaults(command=_traffic)

    versions = _command(
        commands,
        "versions",
        "a model's versions, their metrics and aliases, and the alias history",
        "List every version of a model: when it was created, its task, its offline metrics\n"
        "(held out at training, or on the registered sample) and the aliases pointing at it;\n"
        "then the traffic policy, and every alias change: when, which alias, from and to which\n"
        "version, by whom.",
        "examples:\n  steward versions iris",
    )
    _model_argument(versions)
    versions.set_defaults(command=_versions)

    status_ = _command(
        commands,
        "status",
        "ask the running server what it serves",
        "Ask a running server (GET /models, or GET /models/MODEL) which version of each model\n"
        "it serves, its aliases, and why a version was refused. The server is found at\n"
        "STEWARD_HOST:STEWARD_PORT, or --url.",
        "examples:\n  steward status\n  steward status iris --url http://steward:8000",
    )
    status_.add_argument("model", nargs="?", type=_model_name, metavar="MODEL", help="one model")
    status_.add_argument(
        "--url", type=_url, help="the server (default: http://STEWARD_HOST:STEWARD_PORT)"
    )
    status_.set_defaults(command=_status)

    serve = _command(
        commands,
        "serve",
        "start the HTTP server",
        "Serve every model in the registry. Settings are checked, and the prediction store\n"
        "opened, before the server starts: a problem is one line and exit status 1.",
        "examples:\n  steward serve\n  steward serve --host 0.0.0.0 --port 8080",
    )
    serve.add_argument("--host", help="bind address (default: STEWARD_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (default: STEWARD_PORT or 8000)")
    serve.set_defaults(command=_serve)
    return parser


def _command(
    commands: "argparse._SubParsersAction[_Parser]",
    name: str,
    summary: str,
    description: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
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


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=_model_name, metavar="MODEL", help="model name")


def _promote_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--promote", action="store_true", help="make the new version production")
