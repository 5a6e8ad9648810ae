"""Hyperparameter search for ``steward retrain --search``: a small grid per estimator family,
cross-validated on the retraining's training rows, bounded in time. No HTTP here; scikit-learn
is imported by ``search_parameters`` only, so the record below (a version's ``metadata.search``)
stays light to read with the rest of the registry's metadata.

- The grid: ``GRIDS``, by scikit-learn class name; for a Pipeline, the grid of its final step,
  its keys prefixed with the step's name (``model__C``). A family with no grid is refused
  (``NoSearchGrid``), never skipped: the operator asked for a search.
- The candidates: the recipe's own parameters first (so the search cannot choose something
  worse on cross-validation than the recipe: a tie goes to the recipe), then the grid's other
  points.
- Cross-validation: ``folds`` folds, shuffled with seed 0; stratified for classifiers (fewer
  folds when a class has fewer rows). Scored on the gate's metric (accuracy, f1_macro; MAE,
  negated for scikit-learn), one process (n_jobs=1: the server's cores serve predictions).
- The time bound, an estimate: the recipe's own cross-validation is timed first; each other
  candidate is taken to cost as much. When the whole grid fits the rest of the budget it is
  searched (GridSearchCV); otherwise as many random points of it as fit (RandomizedSearchCV,
  seed 0), at least one. So a search takes about max(budget, two cross-validations of the
  recipe), more when the candidates are costlier than the recipe (more trees, deeper).
- The result: the chosen estimator, unfitted (the caller fits it on all its training rows, as
  any version), and a ``SearchRecord`` of what was tried and how it scored.
"""

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.errors import ArtifactError, NoSearchGrid, TrainingDataRefused
from app.gate import GateMetric, higher_is_better
from app.progress import Progress

Param = str | int | float | bool | None
Grid = dict[str, list[Param]]
Method = Literal["GridSearchCV", "RandomizedSearchCV"]
SEED = 0
SCORING: dict[GateMetric, str] = {
    "accuracy": "accuracy",
    "f1_macro": "f1_macro",
    "mae": "neg_mean_absolute_error",
}

_C: list[Param] = [0.01, 0.1, 1.0, 10.0, 100.0]
_ALPHA: list[Param] = [0.01, 0.1, 1.0, 10.0, 100.0]
_FOREST: Grid = {
    "n_estimators": [100, 300],
    "max_depth": [None, 10],
    "min_samples_leaf": [1, 5],
    "max_features": ["sqrt", 1.0],
}
_HIST: Grid = {
    "learning_rate": [0.05, 0.1, 0.2],
    "max_leaf_nodes": [15, 31, 63],
    "l2_regularization": [0.0, 1.0],
}
_BOOSTING: Grid = {
    "n_estimators": [100, 300],
    "learning_rate": [0.05, 0.1, 0.2],
    "max_depth": [2, 3, 5],
}
_TREE: Grid = {"max_depth": [None, 3, 5, 10], "min_samples_leaf": [1, 5, 20]}
_NEIGHBOURS: Grid = {"n_neighbors": [3, 5, 11, 21], "weights": ["uniform", "distance"]}

GRIDS: dict[str, Grid] = {
    "LogisticRegression": {"C": _C, "class_weight": [None, "balanced"]},
    "RidgeClassifier": {"alpha": _ALPHA, "class_weight": [None, "balanced"]},
    "Ridge": {"alpha": _ALPHA},
    "Lasso": {"alpha": [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]},
    "ElasticNet": {"alpha": [0.001, 0.01, 0.1, 1.0], "l1_ratio": [0.1, 0.5, 0.9]},
    "RandomForestClassifier": _FOREST,
    "RandomForestRegressor": _FOREST,
    "ExtraTreesClassifier": _FOREST,
    "ExtraTreesRegressor": _FOREST,
    "HistGradientBoostingClassifier": _HIST,
    "HistGradientBoostingRegressor": _HIST,
    "GradientBoostingClassifier": _BOOSTING,
    "GradientBoostingRegressor": _BOOSTING,
    "DecisionTreeClassifier": _TREE,
    "DecisionTreeRegressor": _TREE,
    "SVC": {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 0.01, 0.1, 1.0]},
    "SVR": {"C": [0.1, 1.0, 10.0, 100.0], "epsilon": [0.01, 0.1, 1.0]},
    "LinearSVC": {"C": _C},
    "LinearSVR": {"C": _C},
    "KNeighborsClassifier": _NEIGHBOURS,
    "KNeighborsRegressor": _NEIGHBOURS,
}
"""The grid of each estimator family, by scikit-learn class name (docs/operations.md's table)."""

NOTHING_TO_TUNE = {
    "LinearRegression": "ordinary least squares has no hyperparameter to tune; a Ridge recipe "
    "has one (alpha)",
}
# Expected in a search: a candidate that does not converge is still scored; one that fails is
# recorded without a score (None) and never chosen.
_QUIET = ("ConvergenceWarning", "FitFailedWarning", "UndefinedMetricWarning")


class SearchCandidate(BaseModel):
    """One candidate's cross-validated score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    params: dict[str, Param] = Field(
        description="The grid's parameters (the recipe's own: a value that is not a plain one "
        "as its repr)."
    )
    mean: float | None = Field(description="Mean score over the folds; None: a fit failed.")
    std: float | None = Field(description="Standard deviation over the folds.")
    recipe: bool = Field(description="The recipe's own parameters.")


class SearchRecord(BaseModel):
    """A retraining's hyperparameter search: how it ran, what it tried, what it chose."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = Field(description="GridSearchCV: the whole grid; RandomizedSearchCV: part.")
    family: str = Field(description="The estimator family whose grid was searched.")
    metric: GateMetric = Field(description="The scores' metric: the gate's (MAE for regressors).")
    scoring: str = Field(description="scikit-learn's scorer (MAE negated: higher is better).")
    folds: int = Field(ge=2)
    stratified: bool
    grid_size: int = Field(ge=0, description="The grid's points other than the recipe's own.")
    tried: int = Field(ge=1, description="Candidates cross-validated, the recipe's own included.")
    budget_seconds: float = Field(description="STEWARD_SEARCH_SECONDS.")
    recipe_seconds: float = Field(
        description="One cross-validation of the recipe: each candidate's estimated cost."
    )
    elapsed_seconds: float = Field(description="The whole search (not the final fit).")
    best_params: dict[str, Param]
    best_score: float = Field(description="The chosen candidate's mean score, in the metric.")
    recipe_score: float = Field(description="The recipe's own mean score.")
    chose_recipe: bool = Field(description="No candidate scored better than the recipe's own.")
    candidates: list[SearchCandidate] = Field(description="The recipe's own first.")


def search_grid(estimator: Any, where: str, model: str | None = None) -> tuple[str, Grid]:
    """The family (class name) and the grid for ``estimator``, prefixed with the step names
    that lead to a Pipeline's final step; NoSearchGrid when the family has none."""
    prefix = ""
    while hasattr(estimator, "steps") and type(estimator).__name__ == "Pipeline":
        name, estimator = estimator.steps[-1]
        prefix += f"{name}__"
    family = type(estimator).__name__
    ours = type(estimator).__module__.partition(".")[0] == "sklearn"
    if not ours or family not in GRIDS:
        why = NOTHING_TO_TUNE.get(family) if ours else None
        raise NoSearchGrid(
            f"{where}: --search has no grid for {family}"
            + (
                f": {why}"
                if why
                else " (the families it knows: docs/operations.md, Hyperparameter search)"
            )
            + "; retrain without --search",
            model=model,
        )
    return family, {prefix + key: values for key, values in GRIDS[family].items()}


def search_parameters(
    recipe: Any,
    matrix: Any,
    labels: Any,
    *,
    metric: GateMetric,
    budget_seconds: float,
    folds: int,
    progress: Progress,
    where: str,
    model: str | None = None,
) -> tuple[Any, SearchRecord]:
    """The recipe with the parameters that cross-validate best on ``matrix`` and ``labels``
    (unfitted), and the record of the search (see the module's docstring)."""
    from sklearn.base import clone
    from sklearn.model_selection import ParameterGrid

    family, grid = search_grid(recipe, where, model)
    own = recipe.get_params()
    recipe_point = {key: _plain(own[key]) for key in grid}
    points = [p for p in ParameterGrid(grid) if p != recipe_point]
    splitter, stratified = _splitter(metric, labels, folds, where, model)
    folds = splitter.get_n_splits()
    started = time.monotonic()
    with progress.step("search", total=folds, unit="fits") as step, _quiet():
        scorer = _Counted(SCORING[metric], step)
        own_scores = _cross_validate(recipe, matrix, labels, splitter, scorer, where, model)
        recipe_seconds = time.monotonic() - started
        affordable = math.floor((budget_seconds - recipe_seconds) / max(recipe_seconds, 1e-6))
        method, searcher, searched = _searcher(recipe, points, affordable, scorer, splitter)
        step.expect(folds * (1 + searched))
        searcher.fit(matrix, labels)
    candidates = _candidates(recipe_point, own_scores, searcher.cv_results_, metric)
    best = _best(candidates, metric)
    chosen = clone(recipe)
    if not best.recipe:
        chosen.set_params(**best.params)
    if candidates[0].mean is None:  # its scores past the float range (an MAE overflowing)
        raise ArtifactError(
            f"{where}: the recipe's cross-validated score is not finite", model=model
        )
    record = SearchRecord(
        method=method,
        family=family,
        metric=metric,
        scoring=SCORING[metric],
        folds=folds,
        stratified=stratified,
        grid_size=len(points),
        tried=len(candidates),
        budget_seconds=budget_seconds,
        recipe_seconds=round(recipe_seconds, 6),
        elapsed_seconds=round(time.monotonic() - started, 6),
        best_params=best.params,
        best_score=best.mean if best.mean is not None else candidates[0].mean,
        recipe_score=candidates[0].mean,
        chose_recipe=best.recipe,
        candidates=candidates,
    )
    return chosen, record


def _searcher(
    recipe: Any, points: list[dict[str, Any]], affordable: int, scorer: Any, splitter: Any
) -> tuple[Method, Any, int]:
    """GridSearchCV over ``points`` when all are ``affordable``, else RandomizedSearchCV over
    as many as are (at least one); and how many candidates it will cross-validate."""
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    single = [{key: [value] for key, value in point.items()} for point in points]
    common = {"scoring": scorer, "cv": splitter, "refit": False, "n_jobs": 1}
    if affordable >= len(points):
        return "GridSearchCV", GridSearchCV(recipe, single, **common), len(points)
    # Lists only: the points are sampled without replacement, each at most once.
    n_iter = max(1, affordable)
    searcher = RandomizedSearchCV(recipe, single, n_iter=n_iter, random_state=SEED, **common)
    return "RandomizedSearchCV", searcher, n_iter


def _candidates(
    recipe_point: dict[str, Param], own_scores: Any, results: dict[str, Any], metric: GateMetric
) -> list[SearchCandidate]:
    """The recipe's own first, then the searched ones; scores in the metric (MAE positive)."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    own = SearchCandidate(
        params=recipe_point,
        mean=_score(sign * own_scores.mean()),
        std=_score(own_scores.std()),
        recipe=True,
    )
    searched = [
        SearchCandidate(
            params={key: _plain(value) for key, value in params.items()},
            mean=_score(sign * mean),
            std=_score(std),
            recipe=False,
        )
        for params, mean, std in zip(
            results["params"], results["mean_test_score"], results["std_test_score"], strict=True
        )
    ]
    return [own, *searched]


class _Counted:
    """A scorer that advances the search's step once per call: once per cross-validated fit
    (n_jobs=1: every call happens in this process)."""

    def __init__(self, scoring: str, step: Any) -> None:
        from sklearn.metrics import get_scorer

        self._scorer, self._step = get_scorer(scoring), step

    def __call__(self, estimator: Any, matrix: Any, labels: Any, **params: Any) -> float:
        try:
            return float(self._scorer(estimator, matrix, labels, **params))
        finally:
            self._step.advance(1)


def _splitter(
    metric: GateMetric, labels: Any, folds: int, where: str, model: str | None
) -> tuple[Any, bool]:
    """Stratified folds for classifiers (at most as many as the rarest class has rows); plain
    ones for regressors (their metric is always MAE)."""
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    if metric == "mae":
        return KFold(min(folds, len(labels)), shuffle=True, random_state=SEED), False
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    rarest = int(counts.min())
    if rarest < 2:
        raise TrainingDataRefused(
            f"{where}: --search cross-validates on the training rows and needs at least 2 rows "
            f"of each class; one class has {rarest}",
            model=model,
        )
    return StratifiedKFold(min(folds, rarest), shuffle=True, random_state=SEED), True


def _cross_validate(
    recipe: Any, matrix: Any, labels: Any, splitter: Any, scorer: Any, where: str, model: str | None
) -> Any:
    """The recipe's own scores per fold; a recipe that cannot be cross-validated is refused."""
    from sklearn.model_selection import cross_val_score

    try:
        return cross_val_score(
            recipe, matrix, labels, cv=splitter, scoring=scorer, error_score="raise", n_jobs=1
        )
    except ValueError as exc:
        raise ArtifactError(  # the type only: the message may quote stored inputs
            f"{where}: the recipe fails under cross-validation ({type(exc).__name__})",
            model=model,
        ) from exc


def _best(candidates: list[SearchCandidate], metric: GateMetric) -> SearchCandidate:
    """The best mean score; the first of equals (the recipe's own comes first)."""
    best = candidates[0]
    for candidate in candidates[1:]:
        if candidate.mean is None or best.mean is None:
            continue
        better = (
            candidate.mean > best.mean if higher_is_better(metric) else candidate.mean < best.mean
        )
        if better:
            best = candidate
    return best


def _score(value: Any) -> float | None:
    number = float(value)
    return round(number, 6) if math.isfinite(number) else None


def _plain(value: Any) -> Param:
    """A parameter's value as JSON takes it: NumPy scalars as Python ones, others as repr."""
    if value is None or isinstance(value, str | bool):
        return value
    if hasattr(value, "item") and callable(value.item):  # a NumPy scalar
        value = value.item()
    if isinstance(value, int | float):
        return value
    return repr(value)


@contextmanager
def _quiet() -> Iterator[None]:
    """The warnings a search expects (see _QUIET) not shown; others as the caller has them."""
    from sklearn import exceptions

    with warnings.catch_warnings():
        for name in _QUIET:
            warnings.simplefilter("ignore", getattr(exceptions, name))
        warnings.filterwarnings("ignore", "One or more of the test scores are non-finite")
        yield
