"""What ground truth a version accepts, and the error a regressor's prediction makes against it.

A regressor's ground truth is a finite number within its version's training target range
widened by ``target_range_multiple`` spans on each side, and never beyond ``HARD_LIMIT``; the
error it makes against the logged prediction is within ``HARD_LIMIT`` too, or it is refused: no
metric ever receives a value that is not finite. Messages name the field and the rule, never
the value sent or the ground truth already recorded.
"""

import math
from collections.abc import Sequence
from typing import Any

from app.artifacts import ModelMetadata
from app.features import widen

HARD_LIMIT = 1e100
"""Largest |ground truth| and |error| of a regressor, whatever its version knows: an error of
at most 1e100 squares to at most 1e200, so some 1e108 of them still sum to a finite counter."""
SHOWN_CLASSES = 3
"""Classes named as examples when a ground truth is not one of them."""


def target_bounds(metadata: ModelMetadata, multiple: float) -> tuple[float, float]:
    """The ground truth a regressor version accepts, as a closed interval.

    Its training target range widened by ``multiple`` spans on each side (a zero span counts as
    the target's magnitude, at least 1), within ±HARD_LIMIT; ±HARD_LIMIT alone when the version
    has no target range (older metadata, registered models) or ``multiple`` is 0.
    """
    bounds = widen(metadata.target_min, metadata.target_max, multiple)
    if bounds is None or not (math.isfinite(bounds[0]) and math.isfinite(bounds[1])):
        return -HARD_LIMIT, HARD_LIMIT
    return max(bounds[0], -HARD_LIMIT), min(bounds[1], HARD_LIMIT)


def ground_truth_problem(
    metadata: ModelMetadata, ground_truth: object, multiple: float
) -> tuple[str, str] | None:
    """What is wrong with a ground truth for this version, as (rule, type); None if nothing."""
    if metadata.task == "classification":
        classes = metadata.classes or []
        if ground_truth not in classes or isinstance(ground_truth, bool):
            return _not_a_class(classes), "not_a_class"
        return None
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, int | float):
        return "ground_truth must be a number for a regressor", "not_a_number"
    low, high = target_bounds(metadata, multiple)
    try:
        number = float(ground_truth)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not low <= number <= high:  # NaN and infinities fail too
        if (low, high) == (-HARD_LIMIT, HARD_LIMIT):
            rule = f"ground_truth must be a number within ±{HARD_LIMIT:g}"
        else:
            rule = (
                f"ground_truth must be within [{low:g}, {high:g}]: the model's training target "
                f"range widened by {multiple:g} spans on each side"
            )
        return rule, "out_of_range"
    return None


def abs_error(predicted: Any, ground_truth: Any) -> float | None:
    """|prediction - ground truth|, or None when it is not a number within HARD_LIMIT."""
    try:
        error = abs(float(predicted) - float(ground_truth))
    except (TypeError, ValueError, OverflowError):
        return None
    return error if error <= HARD_LIMIT else None  # NaN fails the comparison too


def _not_a_class(classes: Sequence[object]) -> str:
    shown = ", ".join(_short_repr(c) for c in classes[:SHOWN_CLASSES])
    count = f"{len(classes)} class" if len(classes) == 1 else f"{len(classes)} classes"
    if len(classes) <= SHOWN_CLASSES:
        return f"ground_truth must be one of the model's {count}: {shown}"
    return f"ground_truth must be one of the model's {count}, e.g. {shown}"


def _short_repr(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
