"""The input contract of a model version: what a client may send, and how it reaches the model.

Each feature has a ``FeatureSpec`` (stored in metadata.json) that decides what is accepted:

- ``float``: a finite JSON number; ``int``: a JSON integer or a number with no fractional part
  (``3.0``) that a 64-bit integer holds; ``bool``: ``true``/``false`` (the model sees 1.0/0.0);
  ``date``: an ISO 8601 date or date-time (the model sees days since 1970-01-01, UTC);
  ``category``: a string, one of ``categories`` unless the model handles unseen values
  (``open_categories``).
- Numbers outside ``accepted_range`` (the training range widened by a configurable multiple of
  its span) are refused, so a value no training row came near never reaches the model.
- ``nullable``: the model handles a missing value (an imputer, or an estimator that takes NaN),
  so ``null`` or an omitted field is accepted and reaches the model as NaN.

``InputContract`` is built once per served version: its request model validates a body, and
``matrix`` turns validated rows into what the estimator takes. Training builds its matrices
through the same contract, so a model sees at serving time exactly what it was fitted on.
The specs themselves come from data: app/feature_survey.py.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    create_model,
)
from pydantic_core import PydanticCustomError

Row = tuple[Any, ...]
Dtype = Literal["float", "int", "bool", "date", "category"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DAYS_PER_YEAR = 365.25
MAX_CATEGORY_LENGTH = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FeatureSpec(BaseModel):
    """One input column, in the order the model expects."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: Dtype
    min: float | None = Field(None, description="Smallest training value (numbers, dates).")
    max: float | None = Field(None, description="Largest training value (numbers, dates).")
    categories: list[str] | None = None
    open_categories: bool = Field(
        False, description="Values outside `categories` are accepted: the model handles them."
    )
    nullable: bool = Field(
        False, description="null or an omitted value is accepted: the model handles missing."
    )

    @property
    def numeric(self) -> bool:
        """Reaches the model as a float (every kind but ``category``)."""
        return self.dtype != "category"

    def accepted_range(self, multiple: float) -> tuple[float, float] | None:
        """The training range widened by ``multiple`` spans on each side; None: no bound.

        Dates (in days) are widened by at least ``multiple`` years: time moves on, and a model
        trained on one month still serves next year, but not in the year 9999.
        """
        if self.dtype == "bool":
            return None
        if self.dtype == "date":
            return widen(self.min, self.max, multiple, min_span=DAYS_PER_YEAR)
        return widen(self.min, self.max, multiple)


def widen(
    low: float | None, high: float | None, multiple: float, min_span: float = 0.0
) -> tuple[float, float] | None:
    """[low, high] widened by ``multiple`` spans on each side; None when either end is unknown
    or ``multiple`` is 0 (no bound). A zero span is taken as the value's magnitude (at least 1),
    a span under ``min_span`` as ``min_span``.
    """
    if low is None or high is None or multiple <= 0:
        return None
    span = max(high - low or max(abs(low), 1.0), min_span)
    return low - multiple * span, high + multiple * span


def _whole_number(value: object) -> object:
    """``3.0`` is the integer 3; anything else goes to strict integer validation as it is."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _field_type(feature: FeatureSpec, multiple: float) -> Any:
    bounds = feature.accepted_range(multiple)
    # 12 significant digits: "43.9", not "43.900000000000006", in the schema and in errors.
    low, high = (float(f"{b:.12g}") for b in bounds) if bounds else (None, None)
    if feature.dtype == "float":
        return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=low, le=high)]
    if feature.dtype == "int":
        low = INT64_MIN if low is None else max(INT64_MIN, math.ceil(low))
        high = INT64_MAX if high is None else min(INT64_MAX, math.floor(high))
        # Field first: its bounds then show in the JSON schema as minimum/maximum.
        return Annotated[int, Field(strict=True, ge=low, le=high), BeforeValidator(_whole_number)]
    if feature.dtype == "bool":
        return StrictBool
    if feature.dtype == "date":  # also a date alone ("2024-05-01": midnight) and Unix time
        if bounds is None:
            return datetime
        return Annotated[datetime, AfterValidator(_date_within(*bounds))]
    if feature.open_categories or not feature.categories:
        return Annotated[StrictStr, Field(max_length=MAX_CATEGORY_LENGTH)]
    return Annotated[
        StrictStr,
        AfterValidator(_one_of(feature.categories)),
        Field(json_schema_extra={"enum": list(feature.categories)}),
    ]


def _date_within(low: float, high: float) -> Callable[[datetime], datetime]:
    """A date feature's range check, in days since 1970 (naive date-times are UTC)."""
    reason = f"must be between {_iso_day(low)} and {_iso_day(high)}"

    def check(value: datetime) -> datetime:
        if not low <= date_to_days(value) <= high:
            raise PydanticCustomError("date_range", "{reason}", {"reason": reason})
        return value

    return check


def _iso_day(days: float) -> str:
    """The date ``days`` after 1970-01-01, within what a date can be (years 1 to 9999)."""
    first, last = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)
    days = min(max(days, (first - _EPOCH).days), (last - _EPOCH).days)
    return (_EPOCH + timedelta(days=days)).date().isoformat()


def _one_of(categories: Sequence[str]) -> Callable[[str], str]:
    """A closed category's check; its error names a few categories and the count, never the
    value sent (pydantic's Literal error lists every category: kilobytes for a long list)."""
    allowed = frozenset(categories)
    shown = ", ".join(repr(c[:40]) for c in categories[:3])
    more = f" and {len(categories) - 3} more" if len(categories) > 3 else ""
    reason = f"must be one of the model's {len(categories)} categories ({shown}{more})"

    def check(value: str) -> str:
        if value not in allowed:
            raise PydanticCustomError("unknown_category", "{reason}", {"reason": reason})
        return value

    return check


def _field(feature: FeatureSpec, multiple: float) -> tuple[Any, Any]:
    description = _describe(feature, multiple)
    kind = _field_type(feature, multiple)
    if feature.nullable:
        return kind | None, Field(None, alias=feature.name, description=description)
    return kind, Field(alias=feature.name, description=description)


def _describe(feature: FeatureSpec, multiple: float) -> str:
    parts: list[str] = [feature.dtype]
    shown = _iso_day if feature.dtype == "date" else (lambda value: f"{value:g}")
    if feature.dtype != "bool" and feature.min is not None and feature.max is not None:
        parts.append(f"training range [{shown(feature.min)}, {shown(feature.max)}]")
    bounds = feature.accepted_range(multiple)
    if bounds:
        parts.append(f"accepted [{shown(bounds[0])}, {shown(bounds[1])}]")
    if feature.dtype == "category" and feature.open_categories:
        parts.append("unseen categories accepted")
    if feature.nullable:
        parts.append("null or omitted: missing")
    return "; ".join(parts)


def build_request_model(
    name: str,
    version: int,
    features: Sequence[FeatureSpec],
    *,
    max_instances: int,
    range_multiple: float,
) -> type[BaseModel]:
    """The request model of one model version: its exact features, nothing more.

    Fields are named ``f0..fN`` internally and aliased to the feature names, so any column name
    (spaces, punctuation) is a valid JSON key; error locations use the feature names.
    """
    fields: dict[str, Any] = {
        f"f{i}": _field(feature, range_multiple) for i, feature in enumerate(features)
    }
    instance: Any = create_model(
        "Instance",  # /openapi.json names it "<model>.Instance"
        __config__=ConfigDict(extra="forbid", populate_by_name=False),
        __doc__=f"One row of input for {name} v{version}.",
        **fields,
    )
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"Rows to predict with {name} v{version}.",
        instances=(list[instance], Field(min_length=1, max_length=max_instances)),
    )


# --- rows -> what the estimator takes ------------------------------------------------------


def _missing_to_nan(value: Any) -> Any:
    return math.nan if value is None else value


def _bool_to_float(value: Any) -> Any:
    if value is None or value != value:  # missing (None or NaN) stays missing
        return math.nan
    return 1.0 if value else 0.0


def date_to_days(value: Any) -> Any:
    """Days since 1970-01-01 UTC; a naive date-time is taken as UTC."""
    if value is None or value != value:
        return math.nan
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH).total_seconds() / 86400


def _converter(feature: FeatureSpec, float_array: bool) -> Callable[[Any], Any] | None:
    if feature.dtype == "bool":
        return _bool_to_float
    if feature.dtype == "date":
        return date_to_days
    if float_array:
        return None  # NumPy makes None NaN in a float64 array by itself
    return _missing_to_nan if feature.nullable else None


@dataclass(frozen=True, eq=False)
class InputContract:
    """What one model version accepts, and how its rows become the estimator's input."""

    features: tuple[FeatureSpec, ...]
    request_model: type[BaseModel]
    dataframe: bool  # the estimator wants a named DataFrame (it was fitted on one)
    # Per feature, how a validated value becomes the model's (None: as it is); none at all for
    # plain numeric features, whose rows go to NumPy untouched.
    converters: tuple[Callable[[Any], Any] | None, ...]
    numeric: bool  # every feature reaches the model as a float: a float64 array

    @classmethod
    def build(
        cls,
        name: str,
        version: int,
        features: Sequence[FeatureSpec],
        *,
        dataframe: bool = False,
        max_instances: int = 1000,
        range_multiple: float = 0.0,
    ) -> "InputContract":
        model = build_request_model(
            name, version, features, max_instances=max_instances, range_multiple=range_multiple
        )
        numeric = all(f.numeric for f in features)
        converters = tuple(_converter(f, numeric and not dataframe) for f in features)
        return cls(
            tuple(features), model, dataframe, converters if any(converters) else (), numeric
        )

    @cached_property
    def names(self) -> tuple[str, ...]:
        """The feature names, in the order the model takes them."""
        return tuple(f.name for f in self.features)

    def rows(self, request: BaseModel) -> list[Row]:
        """A validated request's instances as value tuples in feature order (f0..fN)."""
        instances: list[BaseModel] = request.instances  # type: ignore[attr-defined]
        return [tuple(vars(instance).values()) for instance in instances]

    def key_count(self, request: BaseModel) -> int:
        """Keys in a validated request's JSON: ``instances`` and each instance's fields."""
        instances: list[BaseModel] = request.instances  # type: ignore[attr-defined]
        return 1 + sum(len(instance.model_fields_set) for instance in instances)

    def matrix(self, rows: Sequence[Row]) -> Any:
        """The estimator's input: a float array (all numeric), an object array, or a DataFrame."""
        converters = self.converters
        if converters:
            rows = [
                tuple(v if c is None else c(v) for c, v in zip(converters, row, strict=True))
                for row in rows
            ]
        if self.dataframe:
            import pandas as pd  # only DataFrame models need it: the CLI's listings stay light

            return pd.DataFrame.from_records(rows, columns=list(self.names))
        return np.array(rows, dtype=np.float64 if self.numeric else object)

    def outside_training_range(self, rows: Sequence[Row]) -> list[dict[str, str]]:
        """Details naming each numeric value outside its feature's training range."""
        details = []
        for index, row in enumerate(rows):
            for feature, value in zip(self.features, row, strict=True):
                if feature.dtype not in ("float", "int") or value is None:
                    continue
                if feature.min is None or feature.max is None:
                    continue
                if not feature.min <= value <= feature.max:
                    details.append(
                        {
                            "field": f"instances.{index}.{feature.name}",
                            "message": "outside the training range "
                            f"[{feature.min:g}, {feature.max:g}]",
                            "type": "outside_training_range",
                        }
                    )
        return details

    def typical_row(self, profile_medians: dict[str, float] | None = None) -> Row:
        """A row any working model scores: training medians (or mid-range), known categories."""
        medians = profile_medians or {}
        values: list[Any] = []
        for f in self.features:
            if f.dtype == "category":
                values.append(f.categories[0] if f.categories else None)
            elif f.dtype == "bool":
                values.append(False)
            elif f.min is None or f.max is None:
                values.append(None if f.nullable else 0.0)
            elif f.dtype == "date":
                values.append(_EPOCH + timedelta(days=(f.min + f.max) / 2))
            else:
                middle = medians.get(f.name, (f.min + f.max) / 2)
                values.append(round(middle) if f.dtype == "int" else middle)
        return tuple(values)


def same_inputs(a: Sequence[FeatureSpec], b: Sequence[FeatureSpec]) -> bool:
    """Whether two versions read the same inputs: names, types, categories, missing values.
    The training ranges are left out: two fits of one recipe on other rows see other extremes,
    and each version accepts STEWARD_INPUT_RANGE_MULTIPLE spans around its own, so they part
    only on outliers far outside both."""
    unbounded = {"min": None, "max": None}
    return [f.model_copy(update=unbounded) for f in a] == [
        f.model_copy(update=unbounded) for f in b
    ]
