"""The rows the retraining gate scores both versions on, and how (app/retraining.py uses it).

- ``held_out``: the base rows (they come first in a RetrainingSet) that ``train_test_split``
  with the base split holds out: the split a retrained version records as ``base_split``, else
  the version's own. For a version trained on that base alone, the rows its metrics were
  measured on; a retraining never trains on them, nor on feedback with the inputs of one of
  them (``same_as_held_out``), so they are rows neither version saw.
- ``Judged.score``: both versions on the same rows, those both accept as a server serves them
  (their contracts with STEWARD_INPUT_RANGE_MULTIPLE); the rows left out are counted in the set
  (``excluded``, with a note). A version that still fails on rows it accepts is a ModelFailure
  naming the error's type, never its message (it may quote stored inputs).
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from app.artifacts import DataSplit, ModelMetadata
from app.errors import ModelFailure, TrainingDataRefused
from app.feature_survey import read_frame
from app.gate import GateMetric, GateSet, SetName, judge, skipped
from app.retraining_data import RetrainingSet
from app.training import evaluate, frame_rows
from app.training_rows import split_positions


def held_out_mask(data: RetrainingSet) -> np.ndarray | None:
    """Which rows of ``data.frame`` are the production version's held-out base rows (see the
    module's docstring); None when there is no base or the version records no split."""
    split = base_split(data.production)
    base = base_rows(data)
    if split is None or base == 0:
        return None
    try:
        _, test = split_positions(data.labels.iloc[:base], split)
    except ValueError as exc:  # a --csv base with a class too rare to stratify
        raise TrainingDataRefused(
            f"{data.production.name}: cannot hold out v{data.production.version}'s split of the "
            f"base rows: {exc}",
            model=data.production.name,
        ) from exc
    mask = np.zeros(len(data.labels), dtype=bool)
    mask[test] = True
    return mask


@dataclass(frozen=True)
class Judged:
    """The two versions the gate compares, and how: the metric, the margin, the date columns,
    and the range multiple each version's contract is served with (STEWARD_INPUT_RANGE_MULTIPLE).

    A version is scored only on rows its contract accepts as served (an unseen category it
    refuses, a number out of its range): both versions are scored on the rows both accept, and
    the rows left out are counted in the set (``excluded``, ``note``)."""

    production: ModelMetadata
    production_estimator: Any
    new: ModelMetadata
    new_estimator: Any
    metric: GateMetric
    margin: float
    dates: list[str]
    range_multiple: float = 0.0

    def score(
        self,
        name: SetName,
        frame: pd.DataFrame,
        labels: pd.Series,
        rows: np.ndarray | None = None,
    ) -> GateSet:
        """Both versions scored on the same rows (``rows``: a mask of them; None: all), those
        both accept as served."""
        if rows is not None:
            frame, labels = frame[rows], labels[rows]
        by_production = ~self._accepted(self.production, frame)
        by_new = ~self._accepted(self.new, frame)
        left_out = by_production | by_new
        note = None
        if left_out.any():
            note = (
                f"{left_out.sum()} of {len(labels)} rows left out: a version refuses them as "
                f"served (production v{self.production.version} {by_production.sum()}, the new "
                f"version {by_new.sum()})"
            )
            frame, labels = frame[~left_out], labels[~left_out]
        if labels.empty:
            return skipped(name, note or "no rows")
        values = read_frame(frame, self.dates) if self.dates else frame
        actual = labels.to_numpy()
        production = self._metric(self.production, self.production_estimator, values, actual)
        new = self._metric(self.new, self.new_estimator, values, actual)
        judged = judge(name, len(labels), production, new, self.metric, self.margin)
        return judged.model_copy(update={"excluded": int(left_out.sum()), "note": note})

    def _accepted(self, metadata: ModelMetadata, frame: pd.DataFrame) -> np.ndarray:
        """Which rows the version's contract takes, as a server with these settings serves it."""
        model = metadata.contract(range_multiple=self.range_multiple).request_model
        accepted = np.ones(len(frame), dtype=bool)
        for index, row in enumerate(frame.to_dict("records")):
            instance = {str(k): None if _missing(v) else v for k, v in row.items()}
            try:
                model.model_validate({"instances": [instance]})
            except ValidationError:
                accepted[index] = False
        return accepted

    def _metric(
        self, metadata: ModelMetadata, estimator: Any, frame: pd.DataFrame, actual: Any
    ) -> float:
        try:
            predicted = estimator.predict(metadata.contract().matrix(frame_rows(frame)))
        except Exception as exc:  # its message may carry stored inputs: the type alone
            who = "the retrained version" if metadata is self.new else f"v{metadata.version}"
            raise ModelFailure(
                f"{metadata.name}: {who} failed to predict rows of the gate its contract "
                f"accepts ({type(exc).__name__})",
                model=metadata.name,
            ) from exc
        return evaluate(metadata.task, actual, predicted)[self.metric]


def base_split(production: ModelMetadata) -> DataSplit | None:
    """The split of the base that set the gate's held_out rows aside: recorded by a retrained
    version (its own ``split`` was taken over other rows), else the version's own split."""
    recorded = production.training_data
    if recorded is None:
        return None
    return recorded.base_split or recorded.split


def same_as_held_out(data: RetrainingSet, held_out: np.ndarray | None) -> np.ndarray:
    """Which feedback rows have the inputs of a held-out base row: trained on, they would put
    the gate's held_out rows in the training rows after all."""
    same = np.zeros(len(data.labels), dtype=bool)
    if held_out is None:
        return same
    base = base_rows(data)
    held = {_inputs_key(row) for row in data.frame[held_out].itertuples(index=False)}
    feedback = data.frame.iloc[base:].itertuples(index=False)
    same[base:] = [_inputs_key(row) in held for row in feedback]
    return same


def _inputs_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row's inputs as a key: a missing value (NaN, which equals nothing) as None."""
    return tuple(None if _missing(value) else value for value in row)


def _missing(value: Any) -> bool:
    """A missing value as a frame holds it (NaN), sent as null."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def base_rows(data: RetrainingSet) -> int:
    """Rows of ``data.frame`` from the base (they come first), not from feedback."""
    return sum(s.rows for s in data.sources if s.kind != "feedback")


def no_split_reason(data: RetrainingSet) -> str:
    if base_rows(data) == 0:
        return "no base data: feedback only"
    return f"v{data.production.version} records no held-out split"
