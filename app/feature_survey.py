"""Surveying data for a model's input contract (app/features.py): a spec per column of a
training or sample frame, the columns a model should not learn from as they are (identifiers,
dates written as text), and what the fitted model handles (missing values, unseen categories).

Used when a version is trained or registered, never on the request path.
"""

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_integer_dtype, is_numeric_dtype

from app.features import Dtype, FeatureSpec, InputContract, Row, date_to_days

MIN_ID_ROWS = 20  # fewer rows than this say nothing about a column being an identifier
UNSEEN_CATEGORY = "__steward_unseen__"
_DATE_TEXT = re.compile(r"^\s*(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4})([ T]|$)")
_ID_NAME = re.compile(r"(^|[^a-z])(id|uuid|guid)$|^(id|uuid|guid)([^a-z]|$)", re.IGNORECASE)


def infer_features(frame: pd.DataFrame, dates: Sequence[str] = ()) -> list[FeatureSpec]:
    """A spec per column of a training or sample frame (as ``read_frame`` prepared it).

    Closed categories and no missing values: ``probe_features`` opens what the model handles.
    """
    specs = []
    for column in frame.columns:
        values = frame[column]
        name = str(column)
        if name in dates:
            days = values.map(date_to_days).astype(np.float64)
            specs.append(_numeric_spec(name, "date", days))
        elif is_bool_dtype(values) or _all_bool(values):
            specs.append(FeatureSpec(name=name, dtype="bool", min=0.0, max=1.0))
        elif is_numeric_dtype(values):
            kind: Dtype = "int" if is_integer_dtype(values) else "float"
            specs.append(_numeric_spec(name, kind, values))
        else:
            categories = sorted({str(v) for v in values.dropna()})
            specs.append(FeatureSpec(name=name, dtype="category", categories=categories))
    return specs


def _numeric_spec(name: str, kind: Dtype, values: "pd.Series[Any]") -> FeatureSpec:
    present = values.dropna()
    if present.empty:
        return FeatureSpec(name=name, dtype=kind)
    return FeatureSpec(name=name, dtype=kind, min=float(present.min()), max=float(present.max()))


def _all_bool(values: "pd.Series[Any]") -> bool:
    present = values.dropna()
    return not present.empty and all(isinstance(v, bool | np.bool_) for v in present)


def read_frame(frame: pd.DataFrame, dates: Sequence[str] = ()) -> pd.DataFrame:
    """A frame read from CSV, as the model will see its columns: numbers and booleans stay,
    declared dates become date-times (UTC), other text becomes strings; missing stays missing."""
    frame = frame.copy()
    for column in frame.columns:
        values = frame[column]
        if str(column) in dates:
            parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
            if parsed.notna().sum() < values.notna().sum():
                raise ValueError(f"column {column!r} is declared a date but not every value is one")
            frame[column] = pd.Series(
                [None if pd.isna(v) else v.to_pydatetime() for v in parsed],
                index=frame.index,
                dtype=object,
            )
        elif is_bool_dtype(values) or _all_bool(values):
            frame[column] = values.map(lambda v: None if pd.isna(v) else bool(v)).astype(object)
        elif not is_numeric_dtype(values):
            frame[column] = values.map(lambda v: v if pd.isna(v) else str(v)).astype(object)
    return frame


def suspicious_columns(frame: pd.DataFrame) -> dict[str, str]:
    """Columns a model should not learn from as they are: identifiers and undeclared dates.

    An identifier takes a new value for every row, so as a category it would refuse every new
    one; a date as text would be a category of days seen in training. Returns column -> why.
    """
    found = {}
    for column in frame.columns:
        values = frame[column].dropna()
        name = str(column)
        if values.empty:
            continue
        text = not is_numeric_dtype(values) and not _all_bool(values)
        if text and values.map(lambda v: bool(_DATE_TEXT.match(str(v)))).mean() >= 0.9:
            found[name] = (
                f"looks like a date: declare it with --date {name} or leave it out with "
                f"--drop {name}"
            )
            continue
        unique = values.nunique() == len(values) and len(values) >= MIN_ID_ROWS
        named_like_id = bool(_ID_NAME.search(name))
        if unique and (text or named_like_id):
            found[name] = (
                f"looks like an identifier ({len(values)} rows, all distinct): "
                f"leave it out with --drop {name}"
            )
    return found


def probe_features(contract: InputContract, estimator: Any, sample: Row) -> list[FeatureSpec]:
    """Ask the fitted estimator what it handles: per feature, a missing value (nullable) and,
    per category, an unseen value (open). A feature passes when predicting a copy of
    ``sample`` with only that value changed succeeds and gives a finite result."""
    features = list(contract.features)
    for index, feature in enumerate(features):
        updates: dict[str, bool] = {}
        if _scores(contract, estimator, _with(sample, index, math.nan)):
            updates["nullable"] = True
        if feature.dtype == "category" and _scores(
            contract, estimator, _with(sample, index, UNSEEN_CATEGORY)
        ):
            updates["open_categories"] = True
        if updates:
            features[index] = feature.model_copy(update=updates)
    return features


def _with(row: Row, index: int, value: Any) -> Row:
    return (*row[:index], value, *row[index + 1 :])


def _scores(contract: InputContract, estimator: Any, row: Row) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = np.asarray(estimator.predict(contract.matrix([row])))
    except Exception:  # any failure means "not handled"
        return False
    if output.dtype.kind not in "fiuc":  # class labels (text, objects, booleans): none is NaN
        return True
    return bool(np.isfinite(output.astype(np.float64)).all())
