"""The gate a retrained version passes before it may serve: not worse than production.

Both versions are scored on the same rows of each evaluated set (app/retraining.py builds them:
production's held-out split, the recent labelled traffic). A set passes when the new version's
score is not worse than production's by more than the margin: for accuracy and macro-F1
(higher is better) an absolute margin, ``new >= production - margin``; for MAE (lower is
better) a relative one, ``new <= production * (1 + margin)``, since an error has the target's
unit. The gate passes when at least one set was evaluated and every evaluated set passes.

Pure functions and the records stored in a version's metadata (``ModelMetadata.gate``); no
scikit-learn here, so the registry's metadata stays light to read.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GateMetric = Literal["accuracy", "f1_macro", "mae"]
SetName = Literal["held_out", "recent"]
Verdict = Literal["pass", "worse", "skipped"]
TOLERANCE = 1e-9  # scores are rounded to 6 decimals: equal scores compare equal


class GateSet(BaseModel):
    """One set both versions were scored on, or why it was skipped (no scores then)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: SetName
    rows: int = Field(ge=0)
    production: float | None = Field(None, description="Production's score on these rows.")
    new: float | None = Field(None, description="The new version's score on the same rows.")
    difference: float | None = Field(None, description="new - production.")
    verdict: Verdict
    excluded: int = Field(
        0, ge=0, description="Rows of the set left out: a version refuses them as served."
    )
    note: str | None = Field(
        None, description="Why it was skipped, or why rows were left out (``excluded``)."
    )


class GateDecision(BaseModel):
    """The gate's decision on a retrained version against the production version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    production_version: int
    metric: GateMetric
    margin: float = Field(ge=0)
    relative: bool = Field(description="The margin is a share of production's score (MAE).")
    sets: list[GateSet]
    reason: str = Field(description="The decision in one line.")


def higher_is_better(metric: GateMetric) -> bool:
    return metric != "mae"


def worse(metric: GateMetric, new: float, old: float, margin: float) -> bool:
    """Whether ``new`` is worse than ``old`` by more than the margin: absolute for accuracy and
    macro-F1, relative for MAE. The automatic rollback judges a promote the same way."""
    if higher_is_better(metric):
        return new < old - margin - TOLERANCE
    return new > old * (1 + margin) + TOLERANCE


def judge(
    name: SetName, rows: int, production: float, new: float, metric: GateMetric, margin: float
) -> GateSet:
    """One evaluated set: ``new`` passes unless worse than ``production`` by over the margin."""
    passed = not worse(metric, new, production, margin)
    return GateSet(
        name=name,
        rows=rows,
        production=production,
        new=new,
        difference=round(new - production, 6),
        verdict="pass" if passed else "worse",
    )


def skipped(name: SetName, note: str) -> GateSet:
    """A set with no rows to score on: said so, and not counted either way."""
    return GateSet(name=name, rows=0, verdict="skipped", note=note)


def at_least(judged: GateSet, min_rows: int) -> GateSet:
    """``judged``, or skipped when it has fewer than ``min_rows`` rows (its scores dropped)."""
    if judged.verdict == "skipped" or judged.rows >= min_rows:
        return judged
    return skipped(
        judged.name,
        f"{judged.rows} rows, fewer than STEWARD_GATE_MIN_ROWS ({min_rows}): too few to judge on",
    )


def decide(
    production_version: int, metric: GateMetric, margin: float, sets: list[GateSet]
) -> GateDecision:
    """Pass when some set was evaluated and none was worse by more than the margin."""
    worse = [s.name for s in sets if s.verdict == "worse"]
    evaluated = [s for s in sets if s.verdict != "skipped"]
    allowed = f"{margin:g}" + (" relative" if not higher_is_better(metric) else "")
    if worse:
        reason = (
            f"{metric} worse than production v{production_version} by more than the margin "
            f"({allowed}) on {', '.join(worse)}"
        )
    elif not evaluated:
        reason = "no rows to compare it with production on (no held-out split, no recent traffic)"
    else:
        reason = (
            f"{metric} not worse than production v{production_version} by more than the margin "
            f"({allowed}) on {', '.join(s.name for s in evaluated)}"
        )
    return GateDecision(
        passed=bool(evaluated) and not worse,
        production_version=production_version,
        metric=metric,
        margin=margin,
        relative=not higher_is_better(metric),
        sets=sets,
        reason=reason,
    )
