"""``steward promote``, ``rollback``, ``traffic`` and ``auto-rollback``: move a model's aliases,
set its traffic policy and its automatic-rollback policy (app/lifecycle.py), on disk; running
servers follow (app/watcher.py, app/auto_rollback.py). ``steward
retrain``: a new version from the production version's recipe and the feedback, aliased only
when the gate passes it (app/retraining.py; scikit-learn and the store imported when it runs).
"""

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING

from app import lifecycle, status
from app.aliases import ALIAS_NAMES, AliasChange, read_alias_file
from app.cli import arguments
from app.cli.errors import UsageError, reader_left
from app.cli.parser import Commands, add_command, model_argument
from app.cli.table import print_table
from app.errors import StoreUnavailable
from app.settings import Settings

if TYPE_CHECKING:
    from app.gate import GateDecision, GateSet
    from app.retraining import RetrainResult
    from app.search import SearchRecord
    from app.store import SqlStore

# What a change on disk means for running servers (app/watcher.py).
SWAP_NOTE = "running servers swap to it within STEWARD_RELOAD_INTERVAL_SECONDS"
TRAFFIC_NOTE = "running servers apply it within STEWARD_RELOAD_INTERVAL_SECONDS"


def add_commands(commands: Commands) -> None:
    promote = add_command(
        commands,
        "promote",
        "point an alias at a version",
        "Point an alias (production by default) at a version, and add the change to the\n"
        "model's alias history (who, when, from, to). Running servers swap to it within\n"
        "STEWARD_RELOAD_INTERVAL_SECONDS, without a restart.",
        "examples:\n  steward promote iris 2\n  steward promote iris 3 --alias candidate",
    )
    model_argument(promote)
    promote.add_argument(
        "version", type=arguments.version_number, metavar="VERSION", help="version number"
    )
    promote.add_argument(
        "--alias", choices=ALIAS_NAMES, default="production", help="default: production"
    )
    promote.set_defaults(command=_promote)

    rollback = add_command(
        commands,
        "rollback",
        "point production back at the version before",
        "Point production back at the version it pointed at before its latest promote; again,\n"
        "and it goes one further back. Recorded in the alias history. Running servers swap to\n"
        "it within STEWARD_RELOAD_INTERVAL_SECONDS, without a restart.",
        "examples:\n  steward rollback iris",
    )
    model_argument(rollback)
    rollback.set_defaults(command=_rollback)

    traffic = add_command(
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
    model_argument(traffic)
    traffic.add_argument("mode", choices=lifecycle.TRAFFIC_MODES, help="the policy")
    traffic.add_argument(
        "--percent",
        type=arguments.percent,
        metavar="P",
        help="share of requests, 0-100 (default: 100 for shadow, 0 for none)",
    )
    traffic.set_defaults(command=_traffic)

    auto = add_command(
        commands,
        "auto-rollback",
        "turn a model's automatic rollback on or off",
        "Set a model's own automatic-rollback policy, in place of STEWARD_AUTO_ROLLBACK: on,\n"
        "running servers roll production back to the version before a promote by themselves\n"
        "when the promoted version's live accuracy (MAE for a regressor) over at least\n"
        "MIN_LABELS labels since its promote is worse than the version before's by more than\n"
        "MARGIN (absolute for accuracy, relative for MAE). Without --min-labels or --margin,\n"
        "the STEWARD_AUTO_ROLLBACK_MIN_LABELS and STEWARD_AUTO_ROLLBACK_MARGIN settings apply.\n"
        "Kept in the model's aliases.json, for every replica.",
        "examples:\n"
        "  steward auto-rollback iris on\n"
        "  steward auto-rollback iris on --min-labels 200 --margin 0.03\n"
        "  steward auto-rollback iris off",
    )
    model_argument(auto)
    auto.add_argument("state", choices=("on", "off"), help="the policy")
    auto.add_argument(
        "--min-labels",
        type=arguments.label_count,
        metavar="N",
        help="labels of the promoted version before it is judged (1-1000000000)",
    )
    auto.add_argument(
        "--margin",
        type=arguments.margin,
        metavar="M",
        help="how much worse it may score, 0-1: absolute for accuracy, relative for MAE",
    )
    auto.set_defaults(command=_auto_rollback)

    retrain = add_command(
        commands,
        "retrain",
        "retrain production on its data and the feedback; alias it if the gate passes",
        "Build a new version from the production version's recipe (its pipeline and\n"
        "hyperparameters, cloned) on its own training data (a demo's, a CSV version's kept\n"
        "copy, or --csv) plus the labelled predictions in the store (deduplicated, shadow rows\n"
        "excluded), less the production version's held-out rows and the recent traffic\n"
        "(STEWARD_RETRAIN_HOLDOUT_SECONDS). The gate then scores both versions on those held-out\n"
        "rows and on the recent traffic (STEWARD_GATE_METRIC, MAE for regressors): the new one\n"
        "passes if not worse by more than STEWARD_GATE_MARGIN on each. It is always kept as a\n"
        "version; --candidate or --promote aliases it only if it passed (exit 1 if not).\n\n"
        "--search first chooses the recipe's hyperparameters by cross-validation on the training\n"
        "rows, over a small grid for its estimator family (the recipe's own among the\n"
        "candidates), within about STEWARD_SEARCH_SECONDS (docs/operations.md, Hyperparameter\n"
        "search). Progress: bars on a terminal (stderr), plain lines on stdout otherwise.",
        "examples:\n"
        "  steward retrain iris --candidate\n"
        "  steward retrain iris --search --candidate\n"
        "  steward retrain iris --since 2026-06-01 --promote\n"
        "  steward retrain churn --csv churn.csv --target churned",
    )
    model_argument(retrain)
    retrain.add_argument(
        "--since",
        type=arguments.iso_date,
        metavar="DATE",
        help="learn from feedback on predictions made at or after DATE (ISO 8601; UTC if no zone)",
    )
    retrain.add_argument(
        "--csv",
        type=arguments.input_file,
        metavar="FILE",
        help="base data instead of the version's own (a version that keeps none)",
    )
    retrain.add_argument("--target", metavar="COLUMN", help="--csv's label column")
    retrain.add_argument(
        "--search",
        action="store_true",
        help="search the recipe's hyperparameters first (within STEWARD_SEARCH_SECONDS)",
    )
    then = retrain.add_mutually_exclusive_group()
    then.add_argument(
        "--candidate",
        dest="then",
        action="store_const",
        const="candidate",
        help="point candidate at the new version if it passed the gate",
    )
    then.add_argument(
        "--promote",
        dest="then",
        action="store_const",
        const="promote",
        help="make the new version production if it passed the gate",
    )
    retrain.set_defaults(command=_retrain, then="keep")


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
    print(f"{args.model}: traffic {status.policy_text(state.traffic)} ({TRAFFIC_NOTE})")
    return 0


def _auto_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from app.auto_rollback import policy

    if args.state == "off" and (args.min_labels is not None or args.margin is not None):
        raise UsageError("--min-labels and --margin go with `on`: `off` judges nothing")
    lifecycle.set_auto_rollback(
        settings.models_dir, args.model, args.state == "on", args.min_labels, args.margin
    )
    applied = policy(settings, read_alias_file(settings.models_dir, args.model))
    print(f"{args.model}: automatic rollback {status.auto_rollback_text(asdict(applied))}")
    return 0


def _change(change: AliasChange) -> str:
    was = "unset" if change.from_ is None else str(change.from_)
    return f"{change.alias} -> version {change.to} (was {was}; {SWAP_NOTE})"


def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    from app.errors import GateRefused
    from app.progress import for_terminal
    from app.retraining import retrain
    from app.retraining_data import production_version

    if args.target is not None and args.csv is None:
        raise UsageError(
            "--target names --csv's label column: give --csv (see `steward retrain --help`)"
        )
    production_version(settings.models_dir, args.model)  # an unknown model named before the store
    store = _feedback_store(settings)
    try:
        result = retrain(
            settings,
            store,
            args.model,
            since=args.since,
            csv=args.csv,
            target=args.target,
            then=args.then,
            search=args.search,
            progress=for_terminal(),
        )
    finally:
        store.close()
    try:
        _print_retraining(result)
    except BrokenPipeError:  # the reader left: the exit status still says whether it passed
        reader_left()
    new = result.version
    if not result.decision.passed and args.then != "keep":
        raise GateRefused(
            f"{new.name} v{new.version} refused by the gate: {result.decision.reason}; kept as a "
            f"version, not aliased",
            model=new.name,
        )
    return 0


def _feedback_store(settings: Settings) -> "SqlStore":
    """The store a server logged the feedback to; never a new, empty one (a retraining against
    the wrong STEWARD_DATA_DIR would learn from nothing, and say nothing). StoreUnavailable,
    naming the setting, if it is not there or cannot be opened."""
    from app.store import open_configured_store

    setting = "STEWARD_DATABASE_URL" if settings.database_url else "STEWARD_DATA_DIR"
    sqlite_file = settings.data_dir / "steward.db"  # the store when no database URL is set
    if settings.database_url is None and not sqlite_file.exists():
        raise StoreUnavailable(
            f"no prediction store at {sqlite_file} ({setting}): a retraining learns from the "
            "feedback a server logged; point STEWARD_DATA_DIR (or STEWARD_DATABASE_URL) at "
            "that server's store"
        )
    try:
        return open_configured_store(settings)
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"{exc} ({setting})") from exc


def _print_retraining(result: "RetrainResult") -> None:
    data, new, decision = result.data, result.version, result.decision
    sources = " + ".join(
        " ".join(filter(None, (s.kind, s.name, f"{s.rows} rows")))
        for s in (new.training_data.sources if new.training_data else [])
    )
    print(
        f"{new.name}: version {new.version} from v{data.production.version}'s recipe on {sources}"
    )
    print(
        f"feedback: {data.labelled} labelled, {result.trained_on} trained on, "
        f"{data.held_out} held out (recent), {result.overlap} same as a held-out row, "
        f"{data.duplicates} duplicates, "
        f"{data.conflicts} conflicts, {data.unfit} unfit"
    )
    if new.search is not None:
        _print_search(new.search)
    print()
    _gate_table(decision, new.version)
    print()
    if not decision.passed:
        print(f"refused: {decision.reason}; kept as version {new.version}, not aliased")
    elif result.aliased is not None and result.aliased.change is not None:
        print(f"passed: {decision.reason}; {_change(result.aliased.change)}")
    else:
        print(f"passed: {decision.reason}; kept as version {new.version}, not aliased")


def _print_search(search: "SearchRecord") -> None:
    tried = search.tried - 1
    print(
        f"search: {search.method} over {search.family}'s grid, {tried} of {search.grid_size} "
        f"candidates and the recipe's own, {search.folds}-fold"
        f"{' stratified' if search.stratified else ''} cross-validation on {search.metric}, "
        f"{search.elapsed_seconds:.1f}s of STEWARD_SEARCH_SECONDS={search.budget_seconds:g}"
    )
    params = ", ".join(f"{k}={v!r}" for k, v in search.best_params.items())
    which = "the recipe's own" if search.chose_recipe else "chosen"
    print(
        f"parameters: {params} ({which}; {search.metric} {search.best_score:.4f} on "
        f"cross-validation, the recipe's own {search.recipe_score:.4f})"
    )


def _gate_table(decision: "GateDecision", version: int) -> None:
    margin = f"{decision.margin:g}" + (" relative" if decision.relative else "")
    print(f"gate: {decision.metric}, margin {margin}")
    rows: list[tuple[str, ...]] = [
        (
            "SET",
            "ROWS",
            f"PRODUCTION v{decision.production_version}",
            f"NEW v{version}",
            "DIFFERENCE",
            "VERDICT",
        )
    ]
    rows += [_gate_row(s) for s in decision.sets]
    print_table(rows)
    for judged in decision.sets:
        if judged.excluded:
            print(f"{judged.name}: {judged.note}")


def _gate_row(judged: "GateSet") -> tuple[str, ...]:
    if judged.verdict == "skipped":
        return (judged.name, "0", "-", "-", "-", f"skipped: {judged.note}")
    return (
        judged.name,
        str(judged.rows),
        f"{judged.production:.4f}",
        f"{judged.new:.4f}",
        f"{judged.difference:+.4f}",
        judged.verdict,
    )
