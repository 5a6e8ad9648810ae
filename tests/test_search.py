"""`steward retrain --search` (app/search.py) on real demo versions: the record in the new
version's metadata, its scores recomputed here by an independent cross-validation of the
training rows, the time bound's two methods, and what is refused (a family with no grid, bad
settings) with nothing written."""

import shutil
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from helpers import (
    METADATA_BEFORE_TRAINING_DATA,
    assert_one_line_error,
    empty_store,
    plan_churn_csv,
    run_cli,
)
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import (
    KFold,
    ParameterGrid,
    StratifiedKFold,
    cross_val_score,
    train_test_split,
)
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from app.artifacts import (
    DataSource,
    ModelMetadata,
    TrainingData,
    load_estimator,
    read_metadata,
)
from app.errors import NoSearchGrid
from app.gate_rows import held_out_mask
from app.retraining_data import retraining_set
from app.search import GRIDS, SearchRecord, search_grid
from app.settings import Settings
from app.store import open_store
from app.training import fit_and_save, train_csv
from app.training_rows import SEED, TEST_SIZE

FOLDS = "2"  # few folds: fast, and still a cross-validation


@pytest.fixture
def search_env(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The environment of the CLI runs below (their store in tmp_path), and its argv prefix."""
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STEWARD_SEARCH_FOLDS", FOLDS)
    empty_store(tmp_path / "data")
    return ["--models-dir", str(models_dir)]


def training_part(models_dir: Path, tmp_path: Path, name: str) -> tuple[pd.DataFrame, pd.Series]:
    """The rows the new version was fitted on, and so searched on: the retraining's rows less
    production's held-out ones, then fit_version's training part (its 25% split, seed 0)."""
    store = open_store(Settings(models_dir=models_dir, data_dir=tmp_path / "data").store_url)
    try:
        data = retraining_set(models_dir, store, name, holdout_seconds=0)
    finally:
        store.close()
    held = held_out_mask(data)
    assert held is not None
    frame = data.frame[~held].reset_index(drop=True)
    labels = data.labels[~held].reset_index(drop=True)
    classifier = data.production.task == "classification"
    train_x, _, train_y, _ = train_test_split(
        frame,
        labels,
        test_size=TEST_SIZE,
        random_state=SEED,
        stratify=labels if classifier else None,
    )
    return train_x, train_y


def test_search_on_the_iris_recipe_records_its_parameters_and_scores_in_a_valid_version(
    search_env: list[str],
    models_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, *search_env, "retrain", "iris", "--search", "--candidate")
    assert (code, err) == (0, "")
    new = read_metadata(models_dir, "iris", 2)
    search = new.search
    assert search is not None
    # the whole grid (C x class_weight) but the recipe's own point, which comes first
    assert (search.method, search.family, search.metric) == (
        "GridSearchCV",
        "LogisticRegression",
        "accuracy",
    )
    assert (search.scoring, search.folds, search.stratified) == ("accuracy", 2, True)
    own = {"model__C": 1.0, "model__class_weight": None}
    assert search.candidates[0].params == own
    assert search.candidates[0].recipe
    points = [
        {f"model__{k}": v for k, v in p.items()} for p in ParameterGrid(GRIDS["LogisticRegression"])
    ]
    assert sorted(map(str, (c.params for c in search.candidates))) == sorted(map(str, points))
    assert (search.grid_size, search.tried, len(search.candidates)) == (9, 10, 10)
    assert search.budget_seconds == 120.0
    assert SearchRecord.model_validate_json(search.model_dump_json()) == search
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        SearchRecord.model_validate({**search.model_dump(), "surprise": 1})
    # metadata written before the field existed still loads, with no search
    assert ModelMetadata.model_validate_json(METADATA_BEFORE_TRAINING_DATA).search is None

    # every score is an independent 2-fold stratified cross-validation of the training rows
    train_x, train_y = training_part(models_dir, tmp_path, "iris")
    v1 = read_metadata(models_dir, "iris", 1)
    recipe = clone(load_estimator(models_dir, v1))
    folds = StratifiedKFold(2, shuffle=True, random_state=0)
    for candidate in search.candidates:
        scores = cross_val_score(
            clone(recipe).set_params(**candidate.params),
            train_x.to_numpy(),
            train_y.to_numpy(),
            cv=folds,
            scoring="accuracy",
        )
        assert (candidate.mean, candidate.std) == (
            round(scores.mean(), 6),
            round(scores.std(), 6),
        ), candidate
    best = max(search.candidates, key=lambda c: c.mean or 0.0)  # the first of equals
    assert search.best_params == best.params
    assert search.best_score == best.mean
    assert search.recipe_score == search.candidates[0].mean
    assert search.best_score >= search.recipe_score
    assert search.chose_recipe == best.recipe

    # the version: the chosen parameters, fitted, saved whole, judged by the gate, aliased
    fitted = load_estimator(models_dir, new)
    assert {k: fitted.get_params()[k] for k in own} == search.best_params
    assert new.training_data is not None
    assert new.training_data.training_rows == len(train_y) == 84
    assert new.gate is not None
    assert new.gate.passed
    assert new.metrics["accuracy"] > 0.9
    # the report names the method and the chosen parameters
    lines = out.splitlines()
    assert any(
        line.startswith("search: GridSearchCV over LogisticRegression's grid, 9 of 9 candidates")
        for line in lines
    )
    params = ", ".join(f"{k}={v!r}" for k, v in search.best_params.items())
    assert any(line.startswith(f"parameters: {params} (") for line in lines), out


def test_a_tiny_budget_still_tries_one_candidate_besides_the_recipe(
    search_env: list[str],
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STEWARD_SEARCH_SECONDS", "0.001")
    code, out, err = run_cli(capsys, *search_env, "retrain", "iris", "--search")
    assert (code, err) == (0, "")
    search = read_metadata(models_dir, "iris", 2).search
    assert search is not None
    assert search.method == "RandomizedSearchCV"
    assert (search.grid_size, search.tried, len(search.candidates)) == (9, 2, 2)
    assert [c.recipe for c in search.candidates] == [True, False]
    assert search.budget_seconds == 0.001
    assert "search: 4/4 fits" in out.splitlines()  # 2 candidates x 2 folds


def test_a_regressor_is_searched_on_mae_with_plain_folds(
    search_env: list[str],
    models_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(capsys, *search_env, "retrain", "diabetes", "--search")
    assert (code, err) == (0, "")
    search = read_metadata(models_dir, "diabetes", 2).search
    assert search is not None
    assert (search.family, search.metric, search.scoring, search.stratified) == (
        "Ridge",
        "mae",
        "neg_mean_absolute_error",
        False,
    )
    assert search.candidates[0].params == {"model__alpha": 1.0}
    assert search.tried == len(GRIDS["Ridge"]["alpha"])
    train_x, train_y = training_part(models_dir, tmp_path, "diabetes")
    recipe = clone(load_estimator(models_dir, read_metadata(models_dir, "diabetes", 1)))
    for candidate in search.candidates:
        errors = -cross_val_score(
            clone(recipe).set_params(**candidate.params),
            train_x.to_numpy(),
            train_y.to_numpy(),
            cv=KFold(2, shuffle=True, random_state=0),
            scoring="neg_mean_absolute_error",
        )
        assert candidate.mean == round(errors.mean(), 6)  # MAE, positive: lower is better
    assert search.best_score == min(c.mean or np.inf for c in search.candidates)


def test_a_csv_version_is_searched_on_the_gates_macro_f1(
    search_env: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`steward train --csv`'s recipe (impute, scale and one-hot, then a logistic regression)
    reads a mixed matrix: the search cross-validates the whole pipeline on it."""
    csv = plan_churn_csv(tmp_path / "churn.csv")
    models = tmp_path / "churn-models"
    train_csv(models, csv, "churned", "churn")
    monkeypatch.setenv("STEWARD_GATE_METRIC", "f1_macro")
    code, _, err = run_cli(capsys, "--models-dir", str(models), "retrain", "churn", "--search")
    assert (code, err) == (0, "")
    new = read_metadata(models, "churn", 2)
    assert new.search is not None
    assert (new.search.metric, new.search.scoring, new.search.folds) == ("f1_macro", "f1_macro", 2)
    assert set(new.search.best_params) == {"model__C", "model__class_weight"}
    assert new.gate is not None
    assert new.gate.metric == "f1_macro"
    # the recipe's own preprocessing, fitted with the chosen model parameters
    fitted = load_estimator(models, new)
    assert [name for name, _ in fitted.steps] == ["prepare", "model"]
    assert fitted.get_params()["model__C"] == new.search.best_params["model__C"]


def test_grids_apply_to_a_pipelines_final_step_and_only_to_scikit_learns_estimators() -> None:
    inner = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())])
    assert search_grid(Pipeline([("outer", inner)]), "m v1") == (
        "LogisticRegression",
        {"outer__clf__C": GRIDS["LogisticRegression"]["C"],
         "outer__clf__class_weight": [None, "balanced"]},
    )  # fmt: skip
    assert search_grid(RandomForestRegressor(), "m v1")[1] == GRIDS["RandomForestRegressor"]

    class Ridge(BaseEstimator):  # type: ignore[misc]  # a family's name, not scikit-learn's
        pass

    with pytest.raises(NoSearchGrid, match=r"^m v1: --search has no grid for Ridge \(the"):
        search_grid(Ridge(), "m v1")
    with pytest.raises(NoSearchGrid, match="ordinary least squares has no hyperparameter"):
        search_grid(LinearRegression(), "m v1")
    # every grid's parameters exist on its family, so no candidate fails for a typo
    import sklearn.utils

    families = dict(sklearn.utils.all_estimators())
    for family, grid in GRIDS.items():
        assert set(grid) <= set(families[family]().get_params()), family


def test_a_family_with_no_grid_is_refused_in_one_line_with_nothing_written(
    search_env: list[str], models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 2)), columns=["a", "b"])
    labels = pd.Series(np.where(frame["a"] > 0, "up", "down"))
    data = TrainingData(sources=[DataSource(kind="csv", name="nb.csv", rows=40)])
    fit_and_save(
        models_dir, "nb", "classification", frame, labels, GaussianNB(), promote=True,
        description="Naive Bayes: no grid.", data=data,
    )  # fmt: skip
    x = pd.DataFrame({"a": np.arange(20, dtype=float)})
    artifact, sample = tmp_path / "line.joblib", tmp_path / "inputs.csv"
    joblib.dump(LinearRegression().fit(x.to_numpy(), 2 * x["a"]), artifact)
    x.to_csv(sample, index=False)
    code, _, _ = run_cli(
        capsys, *search_env, "register", str(artifact), "--name", "line", "--sample", str(sample)
    )
    assert code == 0
    shutil.rmtree(models_dir / "diabetes")  # nothing else changes below
    before = sorted(str(p.relative_to(models_dir)) for p in models_dir.rglob("*"))

    code, out, err = run_cli(capsys, *search_env, "retrain", "nb", "--search", "--promote")
    assert code == 1
    assert_one_line_error(
        err, "nb v1: --search has no grid for GaussianNB", "retrain without --search"
    )
    assert "search: " not in out  # refused before any fit
    code, _, err = run_cli(capsys, *search_env, "retrain", "line", "--search")
    assert code == 1
    assert_one_line_error(err, "line v1: --search has no grid for LinearRegression: ordinary")
    assert sorted(str(p.relative_to(models_dir)) for p in models_dir.rglob("*")) == before


def test_a_class_with_one_training_row_cannot_be_cross_validated_and_is_refused(
    search_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3 rows of class c: v1's split and the retraining's own leave one of them to train on."""
    csv = tmp_path / "rare.csv"
    labels = ["a"] * 30 + ["b"] * 27 + ["c"] * 3
    pd.DataFrame({"x": np.arange(60.0), "y": labels}).to_csv(csv, index=False)
    models = tmp_path / "rare-models"
    train_csv(models, csv, "y", "rare")
    code, _, err = run_cli(capsys, "--models-dir", str(models), "retrain", "rare", "--search")
    assert code == 1
    assert_one_line_error(
        err, "rare v1: --search cross-validates on the training rows and needs at least 2 rows "
        "of each class; one class has 1"
    )  # fmt: skip
    assert sorted(p.name for p in (models / "rare").iterdir() if p.is_dir()) == ["1"]


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("STEWARD_SEARCH_SECONDS", "-1", "greater than 0"),
        ("STEWARD_SEARCH_SECONDS", "0", "greater than 0"),
        ("STEWARD_SEARCH_SECONDS", "nan", "finite number"),
        ("STEWARD_SEARCH_SECONDS", "inf", "finite number"),
        ("STEWARD_SEARCH_SECONDS", "90000", "less than or equal to 86400"),
        ("STEWARD_SEARCH_SECONDS", "soon", "valid number"),
        ("STEWARD_SEARCH_FOLDS", "1", "greater than or equal to 2"),
        ("STEWARD_SEARCH_FOLDS", "2.5", "valid integer"),
    ],
)
def test_bad_search_settings_are_refused_at_start_with_nothing_written(
    search_env: list[str],
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    rule: str,
) -> None:
    monkeypatch.setenv(variable, value)
    code, out, err = run_cli(capsys, *search_env, "retrain", "iris", "--search")
    assert (code, out) == (1, "")
    assert_one_line_error(err, f"invalid settings: {variable}: ", rule)
    assert [p.name for p in (models_dir / "iris").iterdir() if p.is_dir()] == ["1"]
