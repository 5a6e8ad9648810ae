"""Fit, evaluate and register model versions. No HTTP here.

Every path ends in ``save_version``: a version max+1 with metadata (features with dtype and
training range, classes, held-out metrics, reference profile, where its data came from) and
the artifact's sha256. A version trained from a CSV keeps its rows, compressed, in its folder
(``training.csv.gz``) under a size cap; a demo version's rows are rebuilt from scikit-learn
(app/training_data.py).
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_integer_dtype, is_numeric_dtype
from sklearn import datasets
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.artifact_formats import ArtifactFormat
from app.artifacts import (
    DataSource,
    DataSplit,
    InputFormat,
    ModelMetadata,
    Task,
    TrainingData,
    check_name,
    list_versions,
    save_version,
)
from app.compiling import compile_estimator
from app.drift import reference_profile
from app.errors import ArtifactError
from app.feature_survey import infer_features, probe_features, read_frame, suspicious_columns
from app.progress import SILENT, Progress
from app.search import SearchRecord
from app.settings import TRAINING_COPY_MAX_BYTES
from app.training_data import Demo, demo_rows, keep_rows, rows_digest, training_labels
from app.training_rows import SEED, TEST_SIZE, split_rows

MIN_ROWS = 10
MAX_CLASSIFICATION_INTEGER_LABELS = 20
MAX_CLASSES = 100  # more distinct labels than this is an identifier or a number, not a class
MIN_ROWS_PER_CLASS = 3  # on average

Tune = Callable[[Any, Any, Any], tuple[Any, SearchRecord]]
"""(recipe, training matrix, training labels) -> the estimator to fit, and how it was chosen."""

DEMOS = (
    Demo(
        "iris",
        "classification",
        datasets.load_iris,
        lambda: Pipeline(
            [("scale", StandardScaler()), ("model", LogisticRegression(max_iter=1000))]
        ),
        "Iris species from flower measurements (with class probabilities).",
    ),
    Demo(
        "breast-cancer",
        "classification",
        datasets.load_breast_cancer,
        lambda: Pipeline([("scale", StandardScaler()), ("model", RidgeClassifier())]),
        "Malignant or benign tumour from cell-nucleus measurements.",
    ),
    Demo(
        "diabetes",
        "regression",
        datasets.load_diabetes,
        lambda: Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=1.0))]),
        "Disease progression one year after baseline (regression).",
    ),
)


def train_demo(
    root: Path,
    *,
    if_missing: bool = False,
    promote: bool = False,
    artifact_format: ArtifactFormat = "joblib",
) -> list[ModelMetadata]:
    """Train the demo models from datasets bundled inside scikit-learn."""
    trained = []
    for demo in DEMOS:
        if if_missing and list_versions(root, demo.name):
            continue
        frame, labels = demo_rows(demo)
        source = DataSource(
            kind="demo", name=demo.name, rows=len(frame), sha256=rows_digest(frame, labels)
        )
        data = TrainingData(
            sources=[source], no_copy_reason="a demo: rebuilt from scikit-learn's bundled data"
        )
        trained.append(
            fit_and_save(
                root,
                demo.name,
                demo.task,
                frame,
                labels,
                demo.estimator(),
                promote=promote,
                description=demo.description,
                data=data,
                artifact_format=artifact_format,
            )
        )
    return trained


def train_csv(
    root: Path,
    csv: Path,
    target: str,
    name: str,
    task: Task | None = None,
    *,
    promote: bool = False,
    drop: Sequence[str] = (),
    dates: Sequence[str] = (),
    copy_max_bytes: int = TRAINING_COPY_MAX_BYTES,
    artifact_format: ArtifactFormat = "joblib",
) -> ModelMetadata:
    """Train the default pipeline (impute, scale / one-hot, linear model) on a CSV file.

    ``drop`` columns are left out; ``dates`` columns are parsed as dates. A column that looks
    like an identifier or an undeclared date is refused, naming the option that handles it.
    The rows with a target (after ``drop``, before the split) are kept in the version's
    folder, gzip-compressed, when that copy is at most ``copy_max_bytes``.
    """
    check_name(name)
    frame = read_csv(csv)
    if target not in frame.columns:
        raise ArtifactError(f"{csv}: no column {target!r} (columns: {', '.join(frame.columns)})")
    unknown = [c for c in (*drop, *dates) if c not in frame.columns or c == target]
    if unknown:
        raise ArtifactError(f"{csv}: --drop/--date name no feature column: {', '.join(unknown)}")
    frame = frame.drop(columns=list(drop))
    suspicious = suspicious_columns(frame.drop(columns=[target, *dates]))
    if suspicious:
        raise ArtifactError(
            f"{csv}: " + "; ".join(f"column {c!r} {why}" for c, why in suspicious.items())
        )
    given = len(frame)
    frame = frame[frame[target].notna()]
    digest, extra_files, copy = keep_rows(frame, copy_max_bytes)
    labels = frame.pop(target)
    if frame.shape[1] == 0:
        raise ArtifactError(f"{csv}: no feature columns besides {target!r}")
    task = task or infer_task(labels)
    _check_rows(name, len(labels))  # before the classes: too few rows is the first thing to fix
    if task == "classification":
        _check_classes(f"{csv}: target {target!r}", labels)
        labels = training_labels(labels, task)
    elif not is_numeric_dtype(labels):
        raise ArtifactError(f"{csv}: regression needs a numeric target, {target!r} is not")
    try:
        frame = read_frame(frame, dates)
    except ValueError as exc:
        raise ArtifactError(f"{csv}: {exc}") from exc
    features = infer_features(frame, dates)
    numeric = [i for i, f in enumerate(features) if f.numeric]
    categorical = [i for i, f in enumerate(features) if not f.numeric]
    parts = []
    if numeric:
        parts.append(
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric)
        )
    if categorical:
        encode = OneHotEncoder(handle_unknown="ignore")
        parts.append(
            (
                "category",
                make_pipeline(SimpleImputer(strategy="most_frequent"), encode),
                categorical,
            )
        )
    model = LogisticRegression(max_iter=2000) if task == "classification" else Ridge()
    estimator = Pipeline([("prepare", ColumnTransformer(parts)), ("model", model)])
    data = TrainingData(
        sources=[DataSource(kind="csv", name=csv.name, rows=len(frame), sha256=digest)],
        target=target,
        dropped=list(drop),
        dates=list(dates),
        unlabelled_rows=given - len(frame),
        **copy,
    )
    return fit_and_save(
        root,
        name,
        task,
        frame,
        labels,
        estimator,
        promote=promote,
        description=f"Trained by `steward train` on {csv.name}, target {target!r}.",
        dates=dates,
        data=data,
        extra_files=extra_files,
        artifact_format=artifact_format,
    )


def fit_and_save(
    root: Path,
    name: str,
    task: Task,
    frame: pd.DataFrame,
    labels: pd.Series,
    estimator: Any,
    *,
    promote: bool,
    description: str,
    data: TrainingData,
    dates: Sequence[str] = (),
    extra_files: dict[str, bytes] | None = None,
    artifact_format: ArtifactFormat = "joblib",
) -> ModelMetadata:
    """Split, fit, evaluate on the held-out part, profile the training inputs, save
    (``fit_version``, ``compile_estimator`` with its twin proven on the held-out part too, then
    ``save_version``, in ``artifact_format``). ``extra_files`` are saved in the version's
    folder with it (the training copy)."""
    draft, fitted, held_out = fit_version(
        name, task, frame, labels, estimator, description=description, data=data, dates=dates
    )
    draft = draft.model_copy(update={"artifact_format": artifact_format})
    compiled = compile_estimator(root, draft, fitted, (held_out, "training_split"))
    return save_version(
        root, draft, fitted, promote=promote, extra_files=extra_files, compiled=compiled
    )


def fit_version(
    name: str,
    task: Task,
    frame: pd.DataFrame,
    labels: pd.Series,
    estimator: Any,
    *,
    description: str,
    data: TrainingData,
    dates: Sequence[str] = (),
    input_format: InputFormat = "array",
    tune: Tune | None = None,
    progress: Progress = SILENT,
) -> tuple[ModelMetadata, Any, Any]:
    """Split, fit, evaluate on the held-out part, profile the training inputs: the draft
    metadata, the fitted estimator and the held-out part as it takes it (what its compiled
    twin is proven on, besides the reference sample), not saved yet (a retraining judges it
    first).

    ``tune`` (a retraining's --search) chooses the estimator to fit from the training part
    alone, before the fit; its record is the draft's ``search``. ``progress`` sees the fit.

    The fitted model is then asked which features it takes missing and which categories it
    takes unseen (``probe_features``), so the schema accepts what the model handles. ``data``
    says where the rows came from; the counts and the split are added here. ``input_format``:
    how rows reach the model (a retrained registered model may read a named DataFrame)."""
    _check_rows(name, len(frame))
    train_x, test_x, train_y, test_y, stratified = split_rows(frame, labels, task)
    features = infer_features(train_x, dates)
    draft = ModelMetadata(
        name=name,
        task=task,
        features=features,
        description=description,
        input_format=input_format,
    )
    contract = draft.contract()
    train_rows = frame_rows(train_x)
    train_matrix = contract.matrix(train_rows)
    search = None
    if tune is not None:
        estimator, search = tune(estimator, train_matrix, train_y.to_numpy())
    try:
        with progress.step("fit"):
            estimator.fit(train_matrix, train_y.to_numpy())
    except ValueError as exc:  # e.g. a training part left with one class
        raise ArtifactError(f"{name}: training failed: {exc}") from exc
    held_out = contract.matrix(frame_rows(test_x))
    predicted = estimator.predict(held_out)
    draft = draft.model_copy(
        update={
            "features": probe_features(contract, estimator, train_rows[0]),
            "classes": estimator.classes_.tolist() if task == "classification" else None,
            "has_proba": task == "classification" and hasattr(estimator, "predict_proba"),
            "metrics": evaluate(task, test_y.to_numpy(), predicted),
            "training_rows": len(train_x),
            **target_range(task, train_y),
            "reference_profile": reference_profile(np.asarray(train_matrix), features),
            "search": search,
            "training_data": data.model_copy(
                update={
                    "rows": len(frame),
                    "training_rows": len(train_x),
                    "held_out_rows": len(test_x),
                    "split": DataSplit(test_size=TEST_SIZE, seed=SEED, stratified=stratified),
                }
            ),
        }
    )
    return draft, estimator, held_out


def _check_rows(name: str, rows: int) -> None:
    if rows < MIN_ROWS:
        raise ArtifactError(f"{name}: need at least {MIN_ROWS} labelled rows, got {rows}")


def _check_classes(source: str, labels: pd.Series) -> None:
    """Refuse a classification target that is continuous, constant, or has too many classes."""
    classes = labels.nunique()
    numbers = is_numeric_dtype(labels) and not is_bool_dtype(labels)
    if numbers and not np.all(np.mod(labels.to_numpy(dtype=float), 1) == 0):
        raise ArtifactError(
            f"{source} holds continuous numbers ({classes} distinct values), not classes: "
            "use --task regression"
        )
    if classes < 2:
        raise ArtifactError(f"{source} has a single value: there is nothing to classify")
    # Fewer rows per class and scikit-learn suspects a regression target (and warns) when fitting.
    if classes > MAX_CLASSES or classes * MIN_ROWS_PER_CLASS > len(labels):
        hint = "use --task regression" if numbers else "is it an identifier?"
        raise ArtifactError(
            f"{source} has {classes} distinct values in {len(labels)} rows: a classifier needs "
            f"at most {MAX_CLASSES} classes and {MIN_ROWS_PER_CLASS} rows per class on average "
            f"({hint})"
        )


def target_range(task: Task, labels: pd.Series) -> dict[str, float]:
    """A regressor's training target range: what bounds its ground truth and predictions."""
    if task != "regression":
        return {}
    return {"target_min": float(labels.min()), "target_max": float(labels.max())}


def infer_task(labels: pd.Series) -> Task:
    """Classification for text, booleans and few distinct integers; regression otherwise."""
    if is_bool_dtype(labels) or not is_numeric_dtype(labels):
        return "classification"
    if is_integer_dtype(labels) and labels.nunique() <= MAX_CLASSIFICATION_INTEGER_LABELS:
        return "classification"
    return "regression"


def evaluate(task: Task, actual: Any, predicted: Any) -> dict[str, float]:
    if task == "classification":
        return {
            "accuracy": round(float(accuracy_score(actual, predicted)), 6),
            "f1_macro": round(float(f1_score(actual, predicted, average="macro")), 6),
        }
    return {
        "mae": round(float(mean_absolute_error(actual, predicted)), 6),
        "rmse": round(float(np.sqrt(mean_squared_error(actual, predicted))), 6),
        "r2": round(float(r2_score(actual, predicted)), 6),
    }


def read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read CSV: {exc}") from exc
    if frame.empty:
        raise ArtifactError(f"{path}: no rows")
    return frame


def frame_rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    return list(frame.itertuples(index=False, name=None))
