"""The rows a retraining of a model learns from, and the recent traffic it is judged on.

A retraining starts from the model's production version: its own training data (the base) plus
the labelled predictions the store holds for the model (feedback), as ``retraining_set`` builds
them. No HTTP here, and nothing written anywhere.

- The base: a demo version's rows rebuilt from scikit-learn, a CSV version's kept copy; a CSV
  given by the operator (``--csv``) instead, for a version that keeps none (a copy over the
  size cap, a registered model); none otherwise, and then feedback alone must be enough.
- Feedback: the served predictions of every version of the model with their ground truth (never
  a shadow prediction: those live in another table), made at or after ``since``. A row the
  production version could not have been given (another version's schema: a feature missing,
  a value of another type, a label its task cannot learn) is dropped and counted as unfit.
  Labels are normalised to production's classes (``1.0`` sent for a class ``1`` is ``1``), so
  a retrained version's classes keep their type and equal labels compare equal.
  Rows with the same inputs count once: the latest label (by prediction time) wins; the
  others are counted as duplicates (same label) or conflicts (another label).
- Recent traffic: the feedback made within ``holdout_seconds`` of the newest labelled row is
  kept out of training, so a retrained version can be judged on traffic it never saw. Inputs
  are deduplicated before the split, so the same inputs are never on both sides.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from pydantic import ValidationError

from app.aliases import read_aliases
from app.artifacts import (
    NAME_PATTERN,
    DataSource,
    ModelMetadata,
    list_models,
    read_metadata,
    sha256_bytes,
)
from app.errors import LifecycleConflict, TrainingDataRefused, UnknownModel
from app.features import InputContract
from app.store import LabelledRow, PredictionStore
from app.training import DEMOS, MIN_ROWS, read_csv
from app.training_data import (
    DEMO_TARGET,
    demo_training_frame,
    rows_digest,
    training_copy,
    training_labels,
)


@dataclass(frozen=True)
class RetrainingSet:
    """What a retraining of ``production`` learns from and is judged on, and exact counts.

    ``frame`` and ``recent_frame`` have the production version's feature columns, in its
    order; values as stored (a date is its text). ``sources`` are ready for the new version's
    metadata: the base's (when there is one), then the feedback's (``rows``: feedback rows
    trained on). Every labelled row read is accounted for: ``labelled == feedback_rows +
    held_out + duplicates + conflicts + unfit``.
    """

    production: ModelMetadata
    frame: pd.DataFrame
    labels: pd.Series
    recent_frame: pd.DataFrame
    recent_labels: pd.Series
    sources: list[DataSource]
    since: datetime | None  # feedback made at or after this (None: all of it)
    recent_after: datetime | None  # held-out rows were made after this (None: no feedback)
    labelled: int  # labelled served predictions read from the store
    duplicates: int  # same inputs and label as a later row
    conflicts: int  # same inputs as a later row with another label, which won
    unfit: int  # inputs or label the production version cannot take

    @property
    def feedback_rows(self) -> int:
        """Feedback rows in the training rows."""
        return sum(s.rows for s in self.sources if s.kind == "feedback")

    @property
    def held_out(self) -> int:
        """Feedback rows kept out of training: the recent traffic."""
        return len(self.recent_labels)


@dataclass(frozen=True)
class Rows:
    """Feature rows and their labels, one label per row."""

    frame: pd.DataFrame
    labels: pd.Series


@dataclass(frozen=True)
class Base:
    """The base of a retraining: the version's own rows, or a given CSV's, and their source."""

    rows: Rows
    source: DataSource


@dataclass(frozen=True)
class _Feedback:
    train: Rows
    recent: Rows
    recent_after: datetime | None
    labelled: int
    duplicates: int
    conflicts: int
    unfit: int


def retraining_set(
    root: Path,
    store: PredictionStore,
    name: str,
    *,
    since: datetime | None = None,
    csv: Path | None = None,
    target: str | None = None,
    holdout_seconds: float,
) -> RetrainingSet:
    """The rows a retraining of ``name``'s production version learns from (its base data and
    the model's labelled feedback since ``since``) and the recent feedback it is judged on.

    ``csv`` (with ``target``, its label column, when the version records none) replaces the
    version's own data: the way to retrain a version that keeps none. StoreUnavailable passes
    through; TrainingDataRefused when the rows are too few (MIN_ROWS) or ``csv`` lacks columns.
    """
    production = production_version(root, name)
    base = given_csv(production, csv, target) if csv else _own_rows(root, production)
    feedback = _feedback(store, production, since, holdout_seconds)
    learnt = len(feedback.train.labels)
    trained = learnt + (len(base.rows.labels) if base else 0)
    if trained < MIN_ROWS:
        raise TrainingDataRefused(_too_few(production, trained, base is not None), model=name)
    # No empty part in the concatenation: pandas warns about its dtypes.
    parts = ([base.rows] if base else []) + ([feedback.train] if learnt else [])
    classes = pd.concat([p.labels for p in parts]).nunique()
    if production.task == "classification" and classes < 2:
        raise TrainingDataRefused(
            f"{name} v{production.version}: a classifier learns from at least 2 classes, the "
            f"{trained} labelled rows hold {classes}",
            model=name,
        )
    digest = rows_digest(feedback.train.frame, feedback.train.labels) if learnt else None
    sources = [base.source] if base else []
    sources.append(DataSource(kind="feedback", rows=learnt, sha256=digest))
    return RetrainingSet(
        production=production,
        frame=pd.concat([p.frame for p in parts], ignore_index=True),
        labels=pd.concat([p.labels for p in parts], ignore_index=True),
        recent_frame=feedback.recent.frame,
        recent_labels=feedback.recent.labels,
        sources=sources,
        since=since,
        recent_after=feedback.recent_after,
        labelled=feedback.labelled,
        duplicates=feedback.duplicates,
        conflicts=feedback.conflicts,
        unfit=feedback.unfit,
    )


def feedback_since(when: datetime, now: datetime | None = None) -> datetime:
    """A retraining's ``since`` in UTC (a time without a zone is UTC). ValueError, without
    repeating it, for a time UTC cannot hold (year 1 at +14:00) or one in the future: no
    feedback was made since then, and the version would learn from none of it."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        when = when.astimezone(UTC)
    except OverflowError:
        raise ValueError("the date is out of range once in UTC") from None
    if when > (now or datetime.now(UTC)):
        raise ValueError("the date is in the future: no feedback was made since then")
    return when


def production_version(root: Path, name: str) -> ModelMetadata:
    """The metadata of ``name``'s production version: what a retraining starts from."""
    if not NAME_PATTERN.match(name):  # never repeated: it may be anything
        raise UnknownModel("no such model: a model name is 1-64 of a-z, 0-9, '.', '_', '-'")
    if name not in list_models(root):
        raise UnknownModel(f"no model {name!r} in {root}", model=name)
    version = read_aliases(root, name).get("production")
    if version is None:
        raise LifecycleConflict(
            f"{name} has no production version to retrain (`steward promote {name} VERSION` "
            "sets one)",
            model=name,
        )
    return read_metadata(root, name, version)


def _own_rows(root: Path, production: ModelMetadata) -> Base | None:
    """The production version's own training rows: a demo's rebuilt, a CSV version's kept
    copy; None for a version that keeps none (see ``_no_rows_reason``)."""
    data = production.training_data
    source = data.sources[0] if data and data.sources else None
    if source is None or data is None:
        return None
    if source.kind == "demo":
        frame, labels = demo_training_frame(production, DEMOS)
    elif source.kind == "csv" and data.copy_file is not None:
        frame, labels = training_copy(root, production)
    else:
        return None
    return Base(
        Rows(frame[_names(production)], labels), source.model_copy(update={"rows": len(frame)})
    )


def given_csv(production: ModelMetadata, csv: Path, target: str | None = None) -> Base:
    """The rows of a CSV given for a retraining of ``production``: its feature columns and its
    target (``target``, else the one the version records), rows with an empty target left out.

    Other columns are ignored. The source's sha256 is taken as ``steward train`` takes it (the
    file's columns after the version's --drop, rows with a target), so it equals the recorded
    one when the CSV holds the rows the version was trained on.
    """
    where = f"{production.name} v{production.version}"
    data = production.training_data
    demo = data is not None and bool(data.sources) and data.sources[0].kind == "demo"
    named = target is not None
    target = target or (data.target if data else None) or (DEMO_TARGET if demo else None)
    if target is None:
        raise TrainingDataRefused(
            f"{where} records no target column: name the label column of {csv} (--target)",
            model=production.name,
        )
    rows = read_csv(csv)
    names = _names(production)
    missing = [c for c in (*names, target) if c not in rows.columns]
    if missing:
        given = "" if named else "; its label column under another name: --target COLUMN"
        raise TrainingDataRefused(
            f"{csv}: missing columns {', '.join(missing)} (the features and target "
            f"{target!r} of {where}{given})",
            model=production.name,
        )
    rows = rows[rows[target].notna()]
    kept = rows.drop(columns=[c for c in (data.dropped if data else []) if c in rows.columns])
    digest = sha256_bytes(kept.to_csv(index=False).encode())
    frame = rows[names].reset_index(drop=True)
    labels = training_labels(rows[target].reset_index(drop=True), production.task)
    _check_labels(production, labels, f"{csv.name}: column {target!r}")
    return Base(
        Rows(frame, labels), DataSource(kind="csv", name=csv.name, rows=len(frame), sha256=digest)
    )


def _check_labels(production: ModelMetadata, labels: pd.Series, where: str) -> None:
    """Labels of a given CSV the production version's recipe can learn: finite numbers for a
    regressor; for a classifier, values of its classes' type (text or numbers), at least one
    of them a class it knows (else the column is likely not its label). TrainingDataRefused
    with the count otherwise; the values themselves are never repeated."""
    version = f"{production.name} v{production.version}"
    if production.task == "regression":
        numbers = pd.to_numeric(labels, errors="coerce").astype(float)
        bad = int((~numbers.map(math.isfinite)).sum())
        if bad:
            raise TrainingDataRefused(
                f"{where}: {bad} of {len(labels)} labels are not finite numbers, and {version} "
                "is a regressor",
                model=production.name,
            )
        return
    classes = production.classes or []
    text = all(isinstance(c, str) for c in classes)
    bad = int(labels.map(lambda label: isinstance(label, str) != text).sum())
    if bad:
        kind = "text" if text else "numbers"
        raise TrainingDataRefused(
            f"{where}: {bad} of {len(labels)} labels are not {kind} like {version}'s classes",
            model=production.name,
        )
    if classes and not labels.isin(classes).any():
        raise TrainingDataRefused(
            f"{where}: no label is one of {version}'s {len(classes)} classes: is it the "
            "label column?",
            model=production.name,
        )


def _feedback(
    store: PredictionStore, production: ModelMetadata, since: datetime | None, holdout: float
) -> _Feedback:
    """The model's labelled feedback since ``since``: fitted to the production version's
    features, deduplicated, split into training rows and the recent window held out."""
    rows = store.labelled_rows(production.name, since, None)
    fitting = Fitter(production)
    fitted = [item for row in rows if (item := fitting.fit(row)) is not None]
    # Rows made in the same instant (one request's) come in their random ids' order: ordered
    # by their content instead, the same stored rows always give the same training rows.
    fitted.sort(key=lambda f: (f.row.created_at, json.dumps(f.values), json.dumps(f.label)))
    kept, duplicates, conflicts = _deduplicate(fitted)
    recent_after = kept[-1].row.created_at - timedelta(seconds=holdout) if kept else None
    train = [item for item in kept if recent_after is None or item.row.created_at <= recent_after]
    recent = kept[len(train) :]
    labelled_as = label_name(production)
    return _Feedback(
        train=_frame(train, fitting.names, labelled_as),
        recent=_frame(recent, fitting.names, labelled_as),
        recent_after=recent_after,
        labelled=len(rows),
        duplicates=duplicates,
        conflicts=conflicts,
        unfit=len(rows) - len(fitted),
    )


class Fitted(NamedTuple):
    """A stored row that fits the production version: its inputs in the version's feature
    order (as stored), and its label as the version's classes spell it."""

    row: LabelledRow
    values: tuple[Any, ...]
    label: Any


class Fitter:
    """Whether a stored row fits the production version: its inputs, mapped onto the version's
    feature names, are what the version's contract accepts with every category open and no
    range bound (a retrained model learns new categories and new ranges: those are what it is
    retrained for), and its label is one the version's task can learn.

    Labels are normalised, so a retrained version's classes are production's, of the same
    type: a label equal to one of production's classes becomes that class (feedback ``1.0`` for
    a class ``1``); where production's classes are integers, a whole number becomes an integer
    and a fractional one does not fit; a regressor's label is a float."""

    def __init__(self, production: ModelMetadata) -> None:
        self.production = production
        self.names = _names(production)
        features = [f.model_copy(update={"open_categories": True}) for f in production.features]
        self._contract = InputContract.build(production.name, production.version, features)
        classes = production.classes or []
        self._classes = {c: c for c in classes if isinstance(c, str | int | float)}
        self._text_classes = bool(classes) and all(isinstance(c, str) for c in classes)
        self._number_classes = bool(classes) and not self._text_classes
        self._integer_classes = self._number_classes and all(
            isinstance(c, int) and not isinstance(c, bool) for c in classes
        )

    def fit(self, row: LabelledRow) -> Fitted | None:
        """The row's inputs in the production version's feature order, as stored, and its
        label normalised; None when the row does not fit."""
        mapped = {n: row.inputs[n] for n in self.names if n in row.inputs}
        try:
            self._contract.request_model.model_validate({"instances": [mapped]})
        except ValidationError:
            return None
        label = self.label(row.ground_truth)
        if label is None:
            return None
        return Fitted(row, tuple(mapped.get(n) for n in self.names), label)

    def label(self, label: Any) -> Any:
        """The label as the production version learns it; None when it cannot."""
        if isinstance(label, bool) or not isinstance(label, str | int | float):
            return None
        if isinstance(label, float) and not math.isfinite(label):
            return None
        if self.production.task == "regression":
            if isinstance(label, str):
                return None
            try:
                number = float(label)
            except OverflowError:  # an integer beyond any float
                return None
            return number if math.isfinite(number) else None
        if label in self._classes:
            return self._classes[label]
        if isinstance(label, str):
            return None if self._number_classes else label
        if self._text_classes:
            return None
        if self._integer_classes and isinstance(label, float):
            return int(label) if label.is_integer() else None
        return label


def _deduplicate(rows: Sequence[Fitted]) -> tuple[list[Fitted], int, int]:
    """One row per distinct inputs, the latest (``rows`` are oldest first), in time order; the
    others counted as duplicates (the kept row's label, normalised) or conflicts (another)."""
    latest: dict[str, int] = {}
    keys = [json.dumps(item.values) for item in rows]
    for index, key in enumerate(keys):
        latest[key] = index
    duplicates = conflicts = 0
    for index, key in enumerate(keys):
        kept = latest[key]
        if kept == index:
            continue
        same = json.dumps(rows[index].label) == json.dumps(rows[kept].label)
        duplicates += same
        conflicts += not same
    return [rows[i] for i in sorted(latest.values())], duplicates, conflicts


def _frame(rows: Sequence[Fitted], names: list[str], label_name: str) -> Rows:
    frame = pd.DataFrame.from_records([item.values for item in rows], columns=names)
    labels = pd.Series([item.label for item in rows], name=label_name, dtype=object)
    return Rows(frame, labels.infer_objects())


def _too_few(production: ModelMetadata, rows: int, based: bool) -> str:
    where = f"{production.name} v{production.version}"
    message = f"{where}: need at least {MIN_ROWS} labelled rows, got {rows}"
    if based:
        return message
    return f"{message} of feedback ({_no_rows_reason(production)}): pass --csv with its data"


def _no_rows_reason(production: ModelMetadata) -> str:
    """Why the production version keeps no training rows of its own."""
    data = production.training_data
    if data is None:
        return "its metadata records no training data"
    return data.no_copy_reason or "it keeps no copy of its training data"


def _names(production: ModelMetadata) -> list[str]:
    return [f.name for f in production.features]


def label_name(production: ModelMetadata) -> str:
    data = production.training_data
    return (data.target if data else None) or DEMO_TARGET
