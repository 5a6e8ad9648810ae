"""``steward train``, ``register``, ``convert`` and ``models``: new versions into the registry,
and its list.

Training loads scikit-learn and pandas, so it imports them when it runs; ``models`` reads the
registry's files only.
"""

import argparse

from app.aliases import read_aliases
from app.artifact_formats import FILES, FORMATS, ArtifactFormat, ArtifactPolicy, untrusted_types
from app.artifacts import ModelMetadata, list_models, list_versions
from app.cli import arguments
from app.cli.errors import UsageError
from app.cli.parser import Commands, add_command, promote_flag
from app.cli.table import print_table
from app.errors import ArtifactError, UnknownModel, UnknownVersion
from app.settings import Settings


def add_commands(commands: Commands) -> None:
    train = add_command(
        commands,
        "train",
        "train the demo models, or a model from a CSV file",
        "Train a new version: the three demo models (iris, breast-cancer, diabetes) from data\n"
        "bundled with scikit-learn, or a default pipeline (impute, scale / one-hot, linear model)\n"
        "on a CSV file with a header row. Held-out metrics are printed and stored, with where the\n"
        "data came from; a CSV's rows are kept, gzip-compressed, in the version's folder\n"
        "(training.csv.gz) when at most STEWARD_TRAINING_COPY_MAX_BYTES.",
        "examples:\n"
        "  steward train demo --if-missing\n"
        "  steward train --csv churn.csv --target churned --name churn\n"
        "  steward train --csv prices.csv --target price --name prices --task regression\n"
        "  steward train --csv crm.csv --target churned --name churn --drop customer_id "
        "--date signup\n"
        "  steward train demo --format skops",
    )
    train.add_argument("what", nargs="?", choices=["demo"], help="the bundled demo models")
    train.add_argument(
        "--csv", type=arguments.input_file, metavar="FILE", help="training data, with header"
    )
    train.add_argument("--target", metavar="COLUMN", help="the column to predict")
    train.add_argument(
        "--name", type=arguments.model_name, help="model name (a-z, 0-9, '.', '_', '-')"
    )
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
    _format_option(train, "joblib")
    promote_flag(train)
    train.set_defaults(command=_train)

    register = add_command(
        commands,
        "register",
        "register a model trained elsewhere",
        "Register a fitted scikit-learn classifier or regressor, saved with joblib, pickle or\n"
        "skops (a .skops file), as a new version. The feature schema comes from a CSV sample of\n"
        "its inputs, which the model must accept. With --target, the sample also holds the true\n"
        "answers in that column: it is left out of the features, and the model is scored on the\n"
        "sample. Unpickling runs code from the file: register only files you trust. A .skops\n"
        "file is built from trusted types only (STEWARD_SKOPS_TRUSTED_TYPES adds to them).",
        "examples:\n"
        "  steward register model.joblib --name churn --sample inputs.csv\n"
        "  steward register model.joblib --name churn --sample labelled.csv --target churned\n"
        "  steward register model.joblib --name churn --sample inputs.csv --format skops\n"
        "  steward register model.skops --name churn --sample inputs.csv",
    )
    register.add_argument(
        "artifact",
        type=arguments.input_file,
        metavar="MODEL.joblib|MODEL.skops",
        help="the fitted estimator's file",
    )
    register.add_argument("--name", type=arguments.model_name, required=True, help="model name")
    register.add_argument(
        "--sample",
        type=arguments.input_file,
        metavar="FILE",
        required=True,
        help="CSV of example inputs",
    )
    register.add_argument(
        "--target", metavar="COLUMN", help="the sample's column of true answers, if it has one"
    )
    _format_option(register, "joblib, or skops for a .skops file")
    promote_flag(register)
    register.set_defaults(command=_register)

    convert = add_command(
        commands,
        "convert",
        "store a version's estimator in another format, as a new version",
        "Save a version again as the model's next version, its estimator stored in another\n"
        "format (skops, to serve with STEWARD_ALLOW_PICKLE=false) and everything else the same:\n"
        "contract, metrics, training data, compiled twin. The new version is built back from its\n"
        "file and must answer exactly what the source answers on its reference sample, or\n"
        "nothing is written. The source is never changed; aliases stay where they are (promote\n"
        "the new version, or use --promote). A joblib source is unpickled to convert it: its\n"
        "sha256 is checked first, as the server checks it.",
        "examples:\n  steward convert churn 3 --format skops\n"
        "  steward convert churn 3 --format skops --promote",
    )
    convert.add_argument("model", type=arguments.model_name, metavar="MODEL", help="model name")
    convert.add_argument(
        "version", type=arguments.version_number, metavar="VERSION", help="version number"
    )
    convert.add_argument(
        "--format", choices=FORMATS, required=True, help="the format to store it in"
    )
    promote_flag(convert)
    convert.set_defaults(command=_convert)

    compile_ = add_command(
        commands,
        "compile",
        "compile a version into a faster twin, proven equal to it",
        "Convert a saved version's estimator for a faster runtime (ONNX Runtime through\n"
        "skl2onnx; Treelite for tree ensembles) and prove the twin equal to it on the version's\n"
        "reference sample and held-out rows: identical labels, probabilities within 1e-6,\n"
        "values within 1e-6 relative. The twin and its proof go into the version's folder and\n"
        "metadata; a running server loads the version again with it at its next rescan. A model\n"
        "that"
        " cannot be converted, or a twin that differs, keeps serving on scikit-learn, and the\n"
        "reason is recorded (exit status 1). `steward train` and `register` compile already.",
        "examples:\n  steward compile iris\n  steward compile churn 3",
    )
    compile_.add_argument("model", type=arguments.model_name, metavar="MODEL", help="model name")
    compile_.add_argument(
        "version",
        nargs="?",
        type=arguments.version_number,
        metavar="VERSION",
        help="version number (default: production)",
    )
    compile_.set_defaults(command=_compile)

    models = add_command(
        commands, "models", "list models, versions and aliases", "List the registry's models."
    )
    models.set_defaults(command=_models)


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
            settings.models_dir,
            if_missing=args.if_missing,
            promote=args.promote,
            artifact_format=_format(args, settings, "joblib"),
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
                copy_max_bytes=settings.training_copy_max_bytes,
                artifact_format=_format(args, settings, "joblib"),
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
        artifact_format=_format(
            args, settings, "skops" if args.artifact.suffix == ".skops" else "joblib"
        ),
        policy=ArtifactPolicy.of(settings),
    )
    _print_version(settings, metadata)
    _untrusted_note(settings, metadata)
    return 0


def _convert(args: argparse.Namespace, settings: Settings) -> int:
    from app.conversion import convert_version

    root = settings.models_dir
    if args.model not in list_models(root):  # as `steward compile` says it: exit status 1
        raise UnknownModel(f"no model {args.model!r} in {root}", model=args.model)
    known = list_versions(root, args.model)
    if args.version not in known:
        listed = ", ".join(map(str, known)) or "none"
        raise UnknownVersion(f"{args.model} has no version {args.version} (versions: {listed})")
    metadata = convert_version(
        root,
        args.model,
        args.version,
        args.format,
        policy=ArtifactPolicy.of(settings),
        promote=args.promote,
    )
    _print_version(settings, metadata)
    print(f"  converted from version {args.version} to {args.format}: the same answers")
    _untrusted_note(settings, metadata)
    return 0


def _untrusted_note(settings: Settings, metadata: ModelMetadata) -> None:
    """Say so when a skops version just written holds types this environment's allowlist
    does not trust: a server with the same settings refuses it (untrusted_types)."""
    if metadata.artifact_format != "skops":
        return
    path = settings.models_dir / metadata.name / str(metadata.version) / FILES["skops"]
    types = untrusted_types(path.read_bytes(), ArtifactPolicy.of(settings))
    if types:
        print(
            "  note: a server refuses this version (untrusted_types) unless "
            f"STEWARD_SKOPS_TRUSTED_TYPES includes {','.join(types)}"
        )


def _format_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help=f"how the estimator is stored (default: {default}; skops when "
        "STEWARD_ALLOW_PICKLE=false)",
    )


def _format(
    args: argparse.Namespace, settings: Settings, default: ArtifactFormat
) -> ArtifactFormat:
    """The format a new version is stored in: --format, else skops when pickle is refused (a
    joblib version would not serve), else ``default``."""
    chosen: ArtifactFormat | None = args.format
    if chosen == "joblib" and not settings.allow_pickle:
        raise UsageError(
            "--format joblib with STEWARD_ALLOW_PICKLE=false: the server would refuse the "
            "version (use --format skops)"
        )
    if chosen is None:
        chosen = default if settings.allow_pickle else "skops"
    return chosen


def _compile(args: argparse.Namespace, settings: Settings) -> int:
    from app import compiling

    root, version = settings.models_dir, args.version
    if args.model not in list_models(root):  # as `steward promote` says it: exit status 1
        raise UnknownModel(f"no model {args.model!r} in {root}", model=args.model)
    known = list_versions(root, args.model)
    if version is not None and version not in known:
        listed = ", ".join(map(str, known)) or "none"
        raise UnknownVersion(f"{args.model} has no version {version} (versions: {listed})")
    if version is None:
        version = read_aliases(root, args.model).get("production")
        if version is None:
            raise UsageError(
                f"model {args.model!r} has no production version: name one "
                f"(`steward versions {args.model}`)"
            )
    metadata = compiling.compile_version(
        root, args.model, version, policy=ArtifactPolicy.of(settings)
    )
    _print_version(settings, metadata)
    return 0 if metadata.compilation is not None and metadata.compilation.twin else 1


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
    print_table(rows)
    return 0


def _print_version(settings: Settings, metadata: ModelMetadata) -> None:
    aliases = read_aliases(settings.models_dir, metadata.name)
    tags = [a for a, v in sorted(aliases.items()) if v == metadata.version]
    scores = " ".join(f"{k}={v:.4g}" for k, v in metadata.metrics.items())
    suffix = f" ({', '.join(tags)})" if tags else ""
    print(f"{metadata.name}: version {metadata.version}{suffix} {scores}".rstrip())
    compilation = metadata.compilation
    if compilation is not None:
        kind = "twin" if compilation.twin else f"no twin ({compilation.reason})"
        print(f"  {kind}: {compilation.message}")
