"""``steward versions``: a model's versions with their offline and live metrics, champion vs
challenger, its traffic policy and its alias history, as text tables."""

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app import lifecycle, status
from app.cli.parser import Commands, add_command, model_argument
from app.cli.table import print_table
from app.settings import Settings

if TYPE_CHECKING:
    from app.artifacts import TrainingData
    from app.schemas import PairedQuality, VersionQuality


def add_commands(commands: Commands) -> None:
    versions = add_command(
        commands,
        "versions",
        "a model's versions, their metrics and aliases, and the alias history",
        "List every version of a model: when it was created, its task, the aliases pointing at\n"
        "it, where its data came from (csv, demo or sample, rows, whether a copy is kept), its\n"
        "offline metrics (held out at training, or on the registered sample);\n"
        "then the traffic policy, and every alias change: when, which alias, from and to which\n"
        "version, by whom.",
        "examples:\n  steward versions iris",
    )
    model_argument(versions)
    versions.set_defaults(command=_versions)


def _versions(args: argparse.Namespace, settings: Settings) -> int:
    """Offline metrics and aliases per version with its live quality from the prediction store
    (app/quality.py): the rows it served, and, once any version predicted in shadow, the rows
    it shadowed; then champion vs challenger on the same labels; then the alias history."""
    from app import quality  # the store (SQLAlchemy) only for this command

    report = lifecycle.describe(settings.models_dir, args.model)
    live = quality.model_quality(settings, args.model)
    served = {q.version: q for q in live.versions if q.role == "served"} if live else {}
    shadow = {q.version: q for q in live.versions if q.role == "shadow"} if live else {}
    head = ("VERSION", "CREATED", "TASK", "ALIASES", "DATA", "OFFLINE METRICS", "LIVE (LABELLED)")
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
            data_cell(v.training_data),
            detail,
            _live_cell(served.get(v.version) if live is not None else None),
        )
        rows.append((*row, _live_cell(shadow.get(v.version))) if shadow else row)
    print_table(rows)
    if live is None:
        print("live quality: no prediction store yet (nothing served)")
    elif live.paired:
        print()
        _paired_table(live.paired)
    print()
    set_by = report.traffic
    who = f" by {set_by.by}" if set_by.by else ""
    when = f" (set {set_by.at:%Y-%m-%d %H:%M:%S}Z{who})" if set_by.at else ""
    print(f"traffic: {status.policy_text(report.traffic)}{when}")
    print()
    if not report.history:
        print("alias history: none yet")
        return 0
    history = [("AT", "ALIAS", "FROM", "TO", "BY", "ACTION")]
    for c in report.history:
        moved = "-" if c.from_ is None else str(c.from_)
        at = f"{c.at:%Y-%m-%d %H:%M:%S}Z"
        history.append((at, c.alias, moved, str(c.to), c.by, c.action))
    print_table(history)
    return 0


def data_cell(data: "TrainingData | None") -> str:
    """Where a version's data came from, in a few words: ``csv churn.csv 1,234 rows (copy
    kept)``, ``demo iris 150 rows``, ``sample 200 rows``; ``-`` when its metadata predates it."""
    if data is None:
        return "-"
    parts = [" ".join(filter(None, (s.kind, s.name, f"{s.rows:,} rows"))) for s in data.sources]
    cell = " + ".join(parts) or "-"
    if any(s.kind == "csv" for s in data.sources):
        cell += " (copy kept)" if data.copy_file else " (no copy)"
    return cell


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
    print_table(rows)


def _scores_cell(accuracy: float | None, mae: float | None, rmse: float | None) -> str:
    named = (("accuracy", accuracy), ("mae", mae), ("rmse", rmse))
    return " ".join(f"{k}={x:.4g}" for k, x in named if x is not None) or "-"


def _live_cell(quality: "VersionQuality | None") -> str:
    if quality is None or quality.labelled == 0:
        return "-" if quality is None else f"- (0 of {quality.predictions})"
    labelled = f"({quality.labelled} of {quality.predictions})"
    scores = _scores_cell(quality.accuracy, quality.mae, quality.rmse)
    return labelled if scores == "-" else f"{scores} {labelled}"
