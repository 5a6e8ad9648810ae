"""``steward``: parse arguments, call one function, print. Errors are one line and exit 1."""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from app.artifacts import (
    ALIAS_NAMES,
    ModelMetadata,
    list_models,
    list_versions,
    read_aliases,
    set_alias,
)
from app.errors import StewardError
from app.settings import Settings


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings(**({"models_dir": args.models_dir} if args.models_dir else {}))
        result: int = args.command(args, settings)
        return result
    except ValidationError as exc:
        print(f"steward: error: invalid settings: {exc}", file=sys.stderr)
    except (StewardError, OSError) as exc:
        print(f"steward: error: {exc}", file=sys.stderr)
    return 1


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from app import training  # scikit-learn import kept off the other commands' start-up

    if args.what == "demo":
        if args.csv or args.target or args.name:
            raise StewardError("`steward train demo` takes no --csv, --target or --name")
        trained = training.train_demo(
            settings.models_dir, if_missing=args.if_missing, promote=args.promote
        )
        if not trained:
            print("demo models already present")
    elif args.what is None and args.csv and args.target and args.name:
        trained = [
            training.train_csv(
                settings.models_dir,
                args.csv,
                args.target,
                args.name,
                args.task,
                promote=args.promote,
            )
        ]
    else:
        raise StewardError(
            "use `steward train demo` or `steward train --csv F --target C --name N`"
        )
    for metadata in trained:
        _print_version(settings, metadata)
    return 0


def _register(args: argparse.Namespace, settings: Settings) -> int:
    from app import training

    metadata = training.register_estimator(
        settings.models_dir, args.artifact, args.name, args.sample, promote=args.promote
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
        aliases = read_aliases(settings.models_dir, name)
        rows.append((name, versions, " ".join(f"{a}={v}" for a, v in sorted(aliases.items()))))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip())
    return 0


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    set_alias(settings.models_dir, args.model, args.alias, args.version)
    print(f"{args.model}: {args.alias} -> version {args.version} (servers read it on restart)")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.main import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )
    return 0


def _print_version(settings: Settings, metadata: ModelMetadata) -> None:
    aliases = read_aliases(settings.models_dir, metadata.name)
    tags = [a for a, v in sorted(aliases.items()) if v == metadata.version]
    scores = " ".join(f"{k}={v:.4g}" for k, v in metadata.metrics.items())
    suffix = f" ({', '.join(tags)})" if tags else ""
    print(f"{metadata.name}: version {metadata.version}{suffix} {scores}".rstrip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steward", description=__doc__)
    parser.add_argument("--models-dir", type=Path, help="registry root (STEWARD_MODELS_DIR)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train demo models, or a model from a CSV file")
    train.add_argument("what", nargs="?", choices=["demo"], help="the bundled demo models")
    train.add_argument("--csv", type=Path, help="training data with a header row")
    train.add_argument("--target", help="the column to predict")
    train.add_argument("--name", help="model name")
    train.add_argument("--task", choices=["classification", "regression"])
    train.add_argument("--if-missing", action="store_true", help="skip models already present")
    _promote_flag(train)
    train.set_defaults(command=_train)

    register = commands.add_parser("register", help="register a model trained elsewhere")
    register.add_argument("artifact", type=Path, metavar="MODEL.joblib")
    register.add_argument("--name", required=True)
    register.add_argument("--sample", type=Path, required=True, help="CSV of example inputs")
    _promote_flag(register)
    register.set_defaults(command=_register)

    models = commands.add_parser("models", help="list models, versions and aliases")
    models.set_defaults(command=_models)

    promote = commands.add_parser(
        "promote", help="point an alias at a version (also how to roll back)"
    )
    promote.add_argument("model")
    promote.add_argument("version", type=int)
    promote.add_argument("--alias", choices=ALIAS_NAMES, default="production")
    promote.set_defaults(command=_promote)

    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host", help="bind address (default: STEWARD_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: STEWARD_PORT or 8000)")
    serve.set_defaults(command=_serve)
    return parser


def _promote_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--promote", action="store_true", help="make the new version production")
