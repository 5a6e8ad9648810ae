"""Retrain a model's production version on its data plus the feedback Steward collected, and
let the new version serve only if the gate (app/gate.py) finds it not worse. No HTTP here.

- The recipe: the production version's fitted estimator, cloned (``sklearn.base.clone``: the
  same pipeline and hyperparameters, unfitted).
- The rows: ``retraining_set`` (app/retraining_data.py), less the production version's
  held-out rows, fitted as every version is (``fit_version``: split, fit, held-out metrics).
- The gate's sets (app/gate_rows.py), scored for both versions on the same rows:
  ``held_out``: the rows of the base (the production version's first source, rebuilt, or
  --csv) that ``train_test_split`` with the production version's recorded test size, seed and
  stratification holds out. For a version trained on that base alone, exactly the rows its
  metrics were measured on; a retraining never trains on them, so for a retrained production
  version too they are rows neither version saw. Skipped when there is no base or no split.
  ``recent``: the labelled traffic of the last STEWARD_RETRAIN_HOLDOUT_SECONDS, kept out of
  training; skipped when there is none. A set with fewer than STEWARD_GATE_MIN_ROWS rows is
  skipped too. A feedback row with the inputs of a held_out row is not trained on either, and
  a retrained version records the base split (``base_split``) its retraining reuses.
  Each set is scored only on the rows both versions accept as a server serves them (their
  contracts with STEWARD_INPUT_RANGE_MULTIPLE: an unseen category a version refuses, a number
  out of its range); the rows left out are counted in the set (``excluded``, with a note), and
  a set with none left is skipped. A version that still fails on rows it accepts is a
  ModelFailure naming the error's type, never its message (it may quote stored inputs).
- The search (``search=True``, --search): the recipe's hyperparameters chosen by a
  cross-validated search on the new version's training part (app/search.py), before its fit;
  its record is the new version's ``search``.
- Progress: each step (loading feedback, the search, the fit, the evaluation) reports to
  ``progress`` (app/progress.py); silent by default.
- The outcome: the version is always saved, its metadata holding the decision (``gate``); it
  becomes candidate (``then="candidate"``) or production (``then="promote"``) only if it
  passed.
"""

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app import lifecycle
from app.artifact_formats import ArtifactPolicy
from app.artifacts import (
    DataSource,
    ModelMetadata,
    TrainingData,
    load_estimator,
    read_checked,
    save_version,
)
from app.compiling import compile_estimator
from app.errors import NoRecipe, TrainingDataRefused
from app.feature_survey import read_frame
from app.gate import (
    GateDecision,
    GateMetric,
    GateSet,
    at_least,
    decide,
    skipped,
)
from app.gate_rows import (
    Judged,
    base_rows,
    base_split,
    held_out_mask,
    no_split_reason,
    same_as_held_out,
)
from app.lifecycle import AliasState
from app.progress import SILENT, Progress, Step
from app.retraining_data import RetrainingSet, label_name, production_version, retraining_set
from app.search import search_grid, search_parameters
from app.settings import Settings
from app.store import PredictionStore
from app.training import MIN_ROWS, Tune, fit_version
from app.training_data import rows_digest

Then = Literal["keep", "candidate", "promote"]


@dataclass(frozen=True)
class RetrainResult:
    """What a retraining read, the version it saved, the gate's decision, the alias moved."""

    data: RetrainingSet
    version: ModelMetadata
    decision: GateDecision
    aliased: AliasState | None  # None: kept as a version only
    overlap: int = 0  # feedback rows not trained on: the inputs of a held-out row

    @property
    def trained_on(self) -> int:
        """Feedback rows the new version was trained on."""
        return self.data.feedback_rows - self.overlap


def retrain(
    settings: Settings,
    store: PredictionStore,
    name: str,
    *,
    since: datetime | None = None,
    csv: Path | None = None,
    target: str | None = None,
    then: Then = "keep",
    search: bool = False,
    progress: Progress = SILENT,
    by: str | None = None,
) -> RetrainResult:
    """A new version of ``name`` from its production version's recipe (its hyperparameters
    searched first, ``search``), on its data and the feedback since ``since`` (``csv``/
    ``target``: instead of the version's own data), judged against production by the gate,
    saved, and aliased per ``then`` if it passed (``by``: who asked, for the alias history).
    Its steps report to ``progress``. The new version is stored as production is (joblib or
    skops), and as skops whenever the settings refuse pickle."""
    root = settings.models_dir
    policy = ArtifactPolicy.of(settings)
    if search:  # a family with no grid is refused before the store is read
        first = production_version(root, name)
        search_grid(_recipe(first, load_estimator(root, first, policy)), _where(first), name)
    with progress.step("loading feedback", unit="labelled rows") as step:
        data = retraining_set(
            root,
            store,
            name,
            since=since,
            csv=csv,
            target=target,
            holdout_seconds=settings.retrain_holdout_seconds,
        )
        step.advance(data.labelled)
    production = data.production
    fitted = load_estimator(root, production, policy)
    recipe = _recipe(production, fitted)
    metric = gate_metric(settings, production)
    tune = _tune(settings, production, metric, progress) if search else None
    held_out = held_out_mask(data)
    from_base = base_rows(data)
    contributed = from_base - int(held_out.sum()) if held_out is not None else from_base
    keep = ~held_out if held_out is not None else np.ones(len(data.labels), dtype=bool)
    overlap = same_as_held_out(data, held_out)
    keep &= ~overlap
    if int(keep.sum()) < MIN_ROWS:
        raise TrainingDataRefused(
            f"{name} v{production.version}: need at least {MIN_ROWS} rows to train on, got "
            f"{int(keep.sum())} once its held-out rows are set aside",
            model=name,
        )
    training, copy = _training_data(root, data, csv is not None, contributed)
    training = training.model_copy(
        update={
            "base_split": base_split(production) if held_out is not None else None,
            "feedback_since": data.since,
            "feedback_until": data.recent_after,
            "sources": [
                _feedback_trained(s, data, keep) if s.kind == "feedback" else s
                for s in training.sources
            ],
        }
        | ({"target": target} if target is not None else {})
    )
    dates = training.dates
    frame = data.frame[keep].reset_index(drop=True)
    draft, estimator, held_out_part = fit_version(
        name,
        production.task,
        read_frame(frame, dates) if dates else frame,
        data.labels[keep].reset_index(drop=True),
        recipe,
        description=f"Retrained by `steward retrain{' --search' if search else ''}` from "
        f"v{production.version}'s recipe on "
        f"its data and {data.feedback_rows - int(overlap.sum())} rows of feedback.",
        data=training,
        dates=dates,
        input_format=production.input_format,
        tune=tune,
        progress=progress,
    )
    judged = Judged(
        production,
        fitted,
        draft,
        estimator,
        metric,
        settings.gate_margin,
        dates,
        settings.input_range_multiple,
    )
    with progress.step("evaluation", total=2, unit="sets") as step:
        sets = [
            _counted(
                step,
                judged.score("held_out", data.frame, data.labels, held_out)
                if held_out is not None
                else skipped("held_out", no_split_reason(data)),
            ),
            _counted(
                step,
                judged.score("recent", data.recent_frame, data.recent_labels)
                if data.held_out
                else skipped(
                    "recent", "no labelled traffic in the window (STEWARD_RETRAIN_HOLDOUT_SECONDS)"
                ),
            ),
        ]
    sets = [at_least(s, settings.gate_min_rows) for s in sets]
    decision = decide(production.version, metric, settings.gate_margin, sets)
    stored_as = production.artifact_format if policy.allow_pickle else "skops"
    draft = draft.model_copy(update={"gate": decision, "artifact_format": stored_as})
    compiled = compile_estimator(root, draft, estimator, (held_out_part, "training_split"))
    saved = save_version(root, draft, estimator, extra_files=copy, compiled=compiled)
    aliased = None
    if decision.passed and then != "keep":
        alias = "candidate" if then == "candidate" else "production"
        aliased = lifecycle.promote(
            root, name, saved.version, alias, by=by, judged_against=production.version
        )
    return RetrainResult(data, saved, decision, aliased, int(overlap.sum()))


def gate_metric(settings: Settings, production: ModelMetadata) -> GateMetric:
    """The primary metric: STEWARD_GATE_METRIC for classifiers, MAE for regressors."""
    return settings.gate_metric if production.task == "classification" else "mae"


def _feedback_trained(source: DataSource, data: RetrainingSet, keep: np.ndarray) -> DataSource:
    """The feedback source as trained on: its rows less those with a held-out row's inputs,
    and the digest of those rows."""
    base = base_rows(data)
    rows = keep[base:]
    if int(rows.sum()) == source.rows:
        return source
    frame = data.frame.iloc[base:][rows].reset_index(drop=True)
    labels = (
        data.labels.iloc[base:][rows].reset_index(drop=True).rename(label_name(data.production))
    )
    digest = rows_digest(frame, labels) if len(labels) else None
    return source.model_copy(update={"rows": len(labels), "sha256": digest})


def _recipe(production: ModelMetadata, fitted: Any) -> Any:
    """The production version's estimator, unfitted: the same pipeline and hyperparameters."""
    from sklearn.base import clone

    try:
        return clone(fitted)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise NoRecipe(
            f"{production.name} v{production.version} has no recipe to retrain: its "
            f"estimator cannot be cloned by scikit-learn ({type(exc).__name__})",
            model=production.name,
        ) from exc


def _tune(
    settings: Settings,
    production: ModelMetadata,
    metric: GateMetric,
    progress: Progress,
) -> Tune:
    """The search fit_version runs on its training part (app/search.py)."""
    return partial(
        search_parameters,
        metric=metric,
        budget_seconds=settings.search_seconds,
        folds=settings.search_folds,
        progress=progress,
        where=_where(production),
        model=production.name,
    )


def _where(version: ModelMetadata) -> str:
    return f"{version.name} v{version.version}"


def _counted(step: Step, judged: GateSet) -> GateSet:
    """One set of the gate done: the step advances, naming it (and whether it was skipped)."""
    step.advance(1, judged.name if judged.verdict != "skipped" else f"{judged.name} skipped")
    return judged


def _training_data(
    root: Path, data: RetrainingSet, given_csv: bool, contributed: int
) -> tuple[TrainingData, dict[str, bytes]]:
    """The new version's TrainingData (sources: the base, with the rows it contributed, then
    the feedback) and its folder's extra files: the production version's copy of the base,
    carried over so the next retraining finds it."""
    production = data.production
    old = production.training_data
    sources: list[DataSource] = list(data.sources)
    if sources and sources[0].kind != "feedback":
        sources[0] = sources[0].model_copy(update={"rows": contributed})
    kept: dict[str, Any] = {}
    if old is not None:
        kept = {"target": old.target, "dropped": old.dropped, "dates": old.dates}
    if given_csv or sources[0].kind == "feedback" or old is None:
        why = "retrained from a given CSV" if given_csv else "no base data of its own"
        reason = f"{why}: retraining it needs --csv again"
        return TrainingData(sources=sources, no_copy_reason=reason, **kept), {}
    if old.copy_file is not None and old.copy_sha256 is not None:
        copy = read_checked(root, production, old.copy_file, old.copy_sha256)
        kept |= {"copy_file": old.copy_file, "copy_sha256": old.copy_sha256}
        return TrainingData(sources=sources, copy_bytes=len(copy), **kept), {old.copy_file: copy}
    return TrainingData(sources=sources, no_copy_reason=old.no_copy_reason, **kept), {}
