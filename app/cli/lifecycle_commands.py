"""``steward promote``, ``rollback`` and ``traffic``: move a model's aliases and set its traffic
policy (app/lifecycle.py), on disk; running servers follow (app/watcher.py)."""

import argparse

from app import lifecycle, status
from app.aliases import ALIAS_NAMES, AliasChange
from app.cli import arguments
from app.cli.parser import Commands, add_command, model_argument
from app.settings import Settings

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


def _change(change: AliasChange) -> str:
    was = "unset" if change.from_ is None else str(change.from_)
    return f"{change.alias} -> version {change.to} (was {was}; {SWAP_NOTE})"
