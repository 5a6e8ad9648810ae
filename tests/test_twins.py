"""Compiled twins in the core: each proven equal to its estimator when compiled, and `infer`
answering through it what scikit-learn answers, on the demo models, a CSV-trained pipeline with
categories, registered tree ensembles and a retrained version. Every estimator is fitted and
saved through our own code; the twins are the files compiling wrote."""

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from helpers import churn_frame, write_labelled
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import (
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression

from app.artifacts import ModelMetadata, read_metadata, sha256_bytes
from app.compiling import reference_matrix
from app.feature_survey import UNSEEN_CATEGORY
from app.features import Row
from app.loading import LoadedModel, load_version
from app.prediction import infer
from app.registration import register_estimator
from app.retraining import retrain
from app.settings import Settings
from app.store import open_store
from app.training import train_csv
from app.training_rows import stored_held_out_matrix
from app.twins import PROBABILITY_TOLERANCE, VALUE_TOLERANCE

DEMO_HELD_OUT = {"iris": 38, "breast-cancer": 143, "diabetes": 111}  # 25% of each dataset


def load(root: Path, name: str, version: int = 1, *, twins: bool = True) -> LoadedModel:
    """A version as the server loads it (range policy off: any finite value reaches it)."""
    return load_version(
        root,
        name,
        version,
        max_instances=1000,
        input_range_multiple=0,
        target_range_multiple=0,
        twins=twins,
    )


def as_rows(matrix: Any) -> list[Row]:
    """The rows of an estimator's input, as `infer` takes them."""
    if isinstance(matrix, pd.DataFrame):
        return [tuple(row) for row in matrix.itertuples(index=False)]
    return [tuple(row) for row in np.asarray(matrix, dtype=object).tolist()]


def direct(model: LoadedModel, scorer: Any, matrix: Any) -> list[Any]:
    """What ``scorer`` itself answers on ``matrix``, in `infer`'s shape."""
    metadata = model.metadata
    if metadata.task == "classification" and metadata.has_proba:
        proba = np.asarray(scorer.predict_proba(matrix), dtype=np.float64)
        return [
            (metadata.classes[row.argmax()], dict(zip(model.class_keys, row.tolist(), strict=True)))  # type: ignore[index]
            for row in proba
        ]
    return [(label, None) for label in np.asarray(scorer.predict(matrix)).tolist()]


def assert_equal_within_tolerance(
    metadata: ModelMetadata, got: Sequence[Any], expected: Sequence[Any]
) -> None:
    """Identical labels; probabilities within PROBABILITY_TOLERANCE, values within
    VALUE_TOLERANCE relative (absolute under 1): the documented proof."""
    assert len(got) == len(expected)
    if metadata.task == "regression":
        values = np.array([label for label, _ in got], dtype=np.float64)
        truth = np.array([label for label, _ in expected], dtype=np.float64)
        scale = np.maximum(1.0, np.abs(truth))
        assert float((np.abs(values - truth) / scale).max()) <= VALUE_TOLERANCE
        return
    assert [label for label, _ in got] == [label for label, _ in expected]
    if metadata.has_proba:
        keys = list(got[0][1])
        ours = np.array([[p[k] for k in keys] for _, p in got])
        theirs = np.array([[p[k] for k in keys] for _, p in expected])
        assert float(np.abs(ours - theirs).max()) <= PROBABILITY_TOLERANCE


def assert_twin_answers_as_sklearn(root: Path, name: str, version: int, matrix: Any) -> int:
    """`infer` on ``matrix``'s rows, twin on and off: the rows the twin covers are answered by
    it (exactly its own output) within the tolerances of scikit-learn's; the others by
    scikit-learn exactly. Returns how many rows the twin answered."""
    served, plain = load(root, name, version), load(root, name, version, twins=False)
    assert served.twin is not None
    assert served.fallback is None
    assert plain.twin is None
    assert plain.fallback is not None
    assert plain.fallback.reason == "twins_off"
    rows = as_rows(matrix)
    covered = [row for row in rows if served.twin.covered(served.contract.matrix([row])).all()]
    outside = [row for row in rows if row not in covered]
    for part, scorer in ((covered, served.twin), (outside, served.estimator)):
        if not part:
            continue
        answered = infer(served, part)
        assert answered == direct(served, scorer, served.contract.matrix(part))
        sklearn = infer(plain, part)
        assert sklearn == direct(plain, plain.estimator, plain.contract.matrix(part))
        assert_equal_within_tolerance(served.metadata, answered, sklearn)
    return len(covered)


def assert_twin_file_is_the_one_recorded(root: Path, metadata: ModelMetadata) -> None:
    assert metadata.compilation is not None
    assert metadata.compilation.twin is not None
    twin = metadata.compilation.twin
    data = (root / metadata.name / str(metadata.version) / twin.file).read_bytes()
    assert sha256_bytes(data) == twin.sha256
    assert twin.file == {"onnxruntime": "twin.onnx", "treelite": "twin.treelite"}[twin.runtime]


@pytest.mark.parametrize("name", ["iris", "breast-cancer", "diabetes"])
def test_every_demo_model_has_a_twin_proven_and_answering_as_scikit_learn(
    demo_models: Path, name: str
) -> None:
    metadata = read_metadata(demo_models, name, 1)
    assert metadata.compilation is not None
    twin = metadata.compilation.twin
    assert twin is not None, metadata.compilation.message
    assert (twin.runtime, twin.sklearn_steps) == ("onnxruntime", 0)
    proof = twin.proof
    held_out, source = stored_held_out_matrix(demo_models, metadata)
    assert source == "demo"
    assert (proof.held_out_rows, proof.held_out_source) == (DEMO_HELD_OUT[name], "training_split")
    assert len(held_out) == proof.held_out_rows
    reference = reference_matrix(metadata)
    assert proof.reference_rows == len(reference) > 0
    tolerance = PROBABILITY_TOLERANCE if metadata.has_proba else VALUE_TOLERANCE
    assert proof.tolerance == tolerance
    assert 0 <= proof.max_difference <= tolerance
    assert_twin_file_is_the_one_recorded(demo_models, metadata)

    assert assert_twin_answers_as_sklearn(demo_models, name, 1, held_out) > 0
    assert assert_twin_answers_as_sklearn(demo_models, name, 1, reference) == len(reference)


def test_a_csv_pipeline_with_categories_keeps_its_encoder_in_scikit_learn(tmp_path: Path) -> None:
    csv = tmp_path / "churn.csv"
    churn_frame().to_csv(csv, index=False)
    root = tmp_path / "models"
    metadata = train_csv(root, csv, "churned", "churn")
    assert metadata.compilation is not None
    assert metadata.compilation.twin is not None
    twin = metadata.compilation.twin
    assert (twin.runtime, twin.sklearn_steps) == ("onnxruntime", 1)
    assert (twin.proof.held_out_rows, twin.proof.held_out_source) == (30, "training_split")
    assert_twin_file_is_the_one_recorded(root, metadata)
    plan = next(f for f in metadata.features if f.name == "plan")
    assert plan.open_categories
    assert all(f.nullable for f in metadata.features)

    held_out, source = stored_held_out_matrix(root, metadata)
    assert source == "training_copy"
    assert assert_twin_answers_as_sklearn(root, "churn", 1, held_out) > 0
    reference = reference_matrix(metadata)
    assert UNSEEN_CATEGORY in set(reference[:, 0])  # the proof saw an unseen plan
    assert assert_twin_answers_as_sklearn(root, "churn", 1, reference) == len(reference)
    edge = [
        ("enterprise", 5.0, 40.0),  # a plan never seen
        (None, 5.0, 40.0),
        ("basic", None, 40.0),
        ("basic", 5.0, None),
        (None, None, None),
        ("pro", 30.0, 55.5),
    ]
    served = load(root, "churn")
    assert assert_twin_answers_as_sklearn(root, "churn", 1, served.contract.matrix(edge)) == 6


def _register(
    root: Path, folder: Path, name: str, estimator: Any, x: np.ndarray, y: np.ndarray
) -> ModelMetadata:
    """``estimator`` fitted on the even rows, registered with the odd rows as its sample."""
    estimator.fit(x[::2], y[::2])
    artifact, sample = folder / f"{name}.joblib", folder / f"{name}.csv"
    joblib.dump(estimator, artifact)
    pd.DataFrame(x[1::2], columns=[f"f{i}" for i in range(x.shape[1])]).to_csv(sample, index=False)
    return register_estimator(root, artifact, name, sample)


TREE_ENSEMBLES = [
    ("forest", lambda: RandomForestClassifier(n_estimators=10, random_state=0),
     load_iris, "float32"),
    ("boosted-binary", lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0),
     load_breast_cancer, "float64"),
    ("boosted-multi", lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0),
     load_iris, "float64"),
    ("gradient-regressor", lambda: GradientBoostingRegressor(n_estimators=20, random_state=0),
     load_diabetes, "float32"),
    ("forest-regressor", lambda: RandomForestRegressor(n_estimators=10, random_state=0),
     load_diabetes, "float32"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "dataset", "precision"), TREE_ENSEMBLES)
def test_registered_tree_ensembles_have_a_treelite_twin_equal_to_them(
    tmp_path: Path, name: str, make: Any, dataset: Any, precision: str
) -> None:
    root = tmp_path / "models"
    x, y = dataset(return_X_y=True)
    metadata = _register(root, tmp_path, name, make(), x, y)
    assert metadata.compilation is not None
    twin = metadata.compilation.twin
    assert twin is not None, metadata.compilation.message
    assert (twin.runtime, twin.precision, twin.sklearn_steps) == ("treelite", precision, 0)
    assert (twin.proof.held_out_rows, twin.proof.held_out_source) == (len(x[1::2]), "sample")
    assert_twin_file_is_the_one_recorded(root, metadata)
    reference = reference_matrix(metadata)
    assert assert_twin_answers_as_sklearn(root, name, 1, reference) == len(reference)
    # the whole dataset: the training rows, the sample, and rows outside the sample's range
    served = load(root, name)
    assert assert_twin_answers_as_sklearn(root, name, 1, x) < len(x)
    assert not served.twin.covered(x).all()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomForestClassifier(10, random_state=0),
        lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0),
    ],
    ids=["forest", "boosted"],
)
def test_tree_ensembles_answer_missing_values_as_scikit_learn_does(
    tmp_path: Path, make: Any
) -> None:
    """The proof has one row per nullable feature missing; scikit-learn's trees send a missing
    value to a learnt side at every split, and the twin must follow them on any row."""
    root = tmp_path / "models"
    x, y = load_breast_cancer(return_X_y=True)
    metadata = _register(root, tmp_path, "trees", make(), x, y)
    assert all(f.nullable for f in metadata.features)
    holes = x[1::2].copy()
    holes[np.random.default_rng(0).random(holes.shape) < 0.3] = np.nan
    assert assert_twin_answers_as_sklearn(root, "trees", 1, holes) == len(holes)


def test_a_retrained_version_is_proven_on_its_reference_sample_and_its_held_out_split(
    tmp_path: Path,
) -> None:
    x = np.column_stack([np.arange(20, dtype=float), np.arange(20, dtype=float) % 3])
    artifact, sample = tmp_path / "model.joblib", tmp_path / "inputs.csv"
    joblib.dump(LinearRegression().fit(x, 2 * x[:, 0]), artifact)
    pd.DataFrame(x, columns=["a", "b"]).to_csv(sample, index=False)
    root = tmp_path / "models"
    assert register_estimator(root, artifact, "line", sample).input_format == "array"
    settings = Settings(models_dir=root, data_dir=tmp_path / "data", gate_min_rows=4)
    store = open_store(settings.store_url)
    try:
        rows = [
            (timedelta(days=2, minutes=i), {"a": float(i), "b": float(i % 3)}) for i in range(12)
        ]
        rows += [(timedelta(hours=i), {"a": 5.0 + i, "b": 1.0}) for i in range(4)]
        write_labelled(store, "line", [(t, r, 3 * r["a"] + r["b"]) for t, r in rows])
        result = retrain(settings, store, "line")
    finally:
        store.close()
    new = result.version
    assert new.version == 2
    assert new.compilation is not None
    assert new.compilation.twin is not None
    proof = new.compilation.twin.proof
    reference = reference_matrix(new)
    assert proof.reference_rows == len(reference) > 0
    assert new.training_data is not None
    held_out = new.training_data.held_out_rows
    assert (proof.held_out_rows, proof.held_out_source) == (held_out, "training_split")
    assert held_out > 0
    assert proof.held_out_note is None
    assert f"{held_out} held-out rows (training_split)" in new.compilation.message
    assert assert_twin_answers_as_sklearn(root, "line", 2, reference) == len(reference)


def test_the_breast_cancer_twin_labels_rows_at_its_decision_boundary_as_scikit_learn(
    demo_models: Path,
) -> None:
    """skl2onnx converts RidgeClassifier in float32 only, which flips labels within about
    1e-7 of the boundary: its twin computes the decision function in float64 instead."""
    model = load(demo_models, "breast-cancer")
    assert model.twin is not None
    assert (model.twin.record.precision, model.twin.record.scores) == ("float64", True)
    held_out, _ = stored_held_out_matrix(demo_models, model.metadata)
    labels = model.estimator.predict(held_out)
    a, b = held_out[0], held_out[int(np.flatnonzero(labels != labels[0])[0])]
    low, high = 0.0, 1.0  # a + t (b - a): labels[0] at low, the other label at high
    for _ in range(60):
        middle = (low + high) / 2
        if model.estimator.predict((a + middle * (b - a))[None])[0] == labels[0]:
            low = middle
        else:
            high = middle
    rows = np.array([a + t * (b - a) for t in np.linspace(low - 1e-6, high + 1e-6, 201)])
    assert model.twin.covered(rows).all()  # inside the training range: the twin answers them
    served = [label for label, _ in infer(model, as_rows(rows))]
    assert served == model.estimator.predict(rows).tolist()
