"""Compile a saved version: build its twin, prove it equal, record either the twin or why not.

The optimisation stage of a model's life, run by training, registration and retraining once a
version is saved, or by ``steward compile``; never on the request path. Candidates, in order:

1. Treelite, for a tree ensemble (random forests, extra trees, gradient boosting, histogram
   gradient boosting) as the estimator or as a pipeline's last step.
2. ONNX Runtime (skl2onnx, float64) for the whole estimator, when its input is a float
   matrix; a linear classifier without probabilities as its decision function.
3. ONNX Runtime for a pipeline's last step, the steps before it kept in scikit-learn (a
   ColumnTransformer with one-hot encoders, which takes mixed columns ONNX would need one input
   per column for).

The first candidate that passes the proof is the twin. The proof (app/twins.py ``compare``)
runs on the version's reference sample (rows drawn from the training profile in its metadata,
each category at least once, plus a row with each feature missing or unseen where the model
accepts that) and on its held-out rows: the rows it was not fitted on, rebuilt from what is
stored (a demo's dataset, a CSV version's kept copy) or handed in by whoever just fitted it.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.artifact_formats import ArtifactPolicy
from app.artifacts import (
    Compilation,
    Compiled,
    CompiledTwin,
    ModelMetadata,
    TwinProof,
    TwinRuntime,
    load_estimator,
    read_metadata,
    save_compilation,
    sha256_bytes,
)
from app.errors import ArtifactError
from app.feature_survey import UNSEEN_CATEGORY
from app.twins import PROBABILITY_TOLERANCE, VALUE_TOLERANCE, TwinMismatch, compare, open_twin

logger = logging.getLogger(__name__)

REFERENCE_ROWS = 200  # at most: the profile keeps 200 training values per feature
SEED = 0
TREE_ENSEMBLES = (
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
    "HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor",
)
ROUNDS_TO_FLOAT32 = TREE_ENSEMBLES[:6]  # sklearn.tree compares float32; histograms use float64


def compile_version(
    root: Path,
    name: str,
    version: int,
    held_out: tuple[Any, str] | None = None,
    policy: ArtifactPolicy | None = None,
) -> ModelMetadata:
    """Compile a saved version and record the result in its metadata; returns the metadata.

    ``held_out``: the version's held-out matrix and where it came from, when the caller has
    it; otherwise it is rebuilt from what is stored, where it can be. ArtifactError when the
    version cannot be read, or ``policy`` refuses its artifact."""
    metadata = read_metadata(root, name, version)
    estimator = load_estimator(root, metadata, policy)
    return save_compilation(root, metadata, *compile_estimator(root, metadata, estimator, held_out))


def compile_estimator(
    root: Path, metadata: ModelMetadata, estimator: Any, held_out: tuple[Any, str] | None
) -> Compiled:
    """The compilation of ``estimator`` (the version, or the draft of one, that ``metadata``
    describes), and the twin's bytes when it has one. Blocking: converting and proving take
    tens of milliseconds to seconds. Never raises: compiling is an optimisation, and a version
    that cannot be compiled serves on scikit-learn."""
    try:
        return _compile(root, metadata, estimator, held_out)
    except Exception as exc:
        logger.exception("%s: compiling failed", metadata.name)
        message = f"compiling failed: {_one_line(exc)}"
        return Compilation(reason="unsupported", message=message, compiled_at=now()), None


def _compile(
    root: Path, metadata: ModelMetadata, estimator: Any, held_out: tuple[Any, str] | None
) -> Compiled:
    reference = reference_matrix(metadata)
    if held_out is None:
        held_out, note = _stored_held_out(root, metadata)
    else:
        note = None
    proof_matrices = [
        matrix
        for matrix in (reference, None if held_out is None else held_out[0])
        if matrix is not None and len(matrix)
    ]
    if not proof_matrices:
        message = "no reference profile and no held-out rows to prove a twin on"
        return Compilation(reason="no_proof_rows", message=message, compiled_at=now()), None
    failures: list[str] = []
    for candidate in _candidates(metadata, estimator):
        runtime, precision = candidate.runtime, candidate.precision
        try:
            data = candidate.build()
        except Exception as exc:  # converters raise anything for a model they do not know
            failures.append(f"{runtime}: cannot convert: {_one_line(exc)}")
            continue
        record = CompiledTwin(
            runtime=runtime,
            runtime_version=_runtime_version(runtime),
            file="twin.onnx" if runtime == "onnxruntime" else "twin.treelite",
            sha256=sha256_bytes(data),
            sklearn_steps=candidate.sklearn_steps,
            precision=precision,
            scores=candidate.scores,
            proof=TwinProof(reference_rows=0, held_out_rows=0, max_difference=0, tolerance=0),
        )
        try:
            twin = open_twin(record, data, estimator, metadata)
            difference = max(compare(twin, estimator, metadata, m) for m in proof_matrices)
        except TwinMismatch as exc:
            failures.append(f"{runtime} ({precision}): {exc}")
            continue
        except Exception as exc:  # a runtime that cannot run what its converter wrote
            failures.append(f"{runtime}: cannot run: {_one_line(exc)}")
            continue
        proof = TwinProof(
            reference_rows=0 if reference is None else len(reference),
            held_out_rows=0 if held_out is None else len(held_out[0]),
            held_out_source=None if held_out is None else held_out[1],
            held_out_note=note,
            max_difference=difference,
            tolerance=PROBABILITY_TOLERANCE if metadata.has_proba else VALUE_TOLERANCE,
        )
        record = record.model_copy(update={"proof": proof})
        return Compilation(twin=record, message=_proven(record), compiled_at=now()), data
    if not failures:
        failures.append(
            f"{_kind(estimator)} was fitted on a named DataFrame: only a pipeline's last step "
            "can be compiled (the steps before it read the frame in scikit-learn)"
            if metadata.input_format == "dataframe"
            else f"{_kind(estimator)} has no converter in skl2onnx or Treelite"
        )
    converted = any("cannot convert" not in failure for failure in failures)
    return Compilation(
        reason="proof_failed" if converted else "unsupported",
        message="; ".join(failures),
        compiled_at=now(),
    ), None


def reference_matrix(metadata: ModelMetadata) -> Any:
    """The reference sample as the estimator's input, or None when the version has no usable
    reference profile: up to REFERENCE_ROWS rows whose columns are each feature's training
    sample shuffled (categories cycled, each at least once), then a row per feature that may be
    missing (missing there) or may be unseen (an unseen category there)."""
    profiles = metadata.reference_profile
    features = metadata.features
    if not features or any(f.name not in profiles for f in features):
        return None
    rng = np.random.default_rng(SEED)
    columns: list[list[Any]] = []
    for feature in features:
        profile = profiles[feature.name]
        if feature.numeric:
            columns.append(list(profile.sample or ()))
        else:
            columns.append(list(feature.categories or sorted(profile.frequencies or ())))
    count = min(REFERENCE_ROWS, max((len(c) for c in columns), default=0))
    if count == 0:
        return None
    filled = []
    for values in columns:
        if not values:  # never present in training: its typical value is "missing"
            values = [np.nan]
        repeated = [values[i % len(values)] for i in range(count)]
        filled.append([repeated[i] for i in rng.permutation(count)])
    rows = [list(row) for row in zip(*filled, strict=True)]
    for index, feature in enumerate(features):
        if feature.nullable:
            rows.append([*rows[0][:index], np.nan, *rows[0][index + 1 :]])
        if not feature.numeric and feature.open_categories:
            rows.append([*rows[0][:index], UNSEEN_CATEGORY, *rows[0][index + 1 :]])
    return _assemble(metadata, rows)


def _assemble(metadata: ModelMetadata, rows: list[list[Any]]) -> Any:
    """Rows of model-side values (after the contract's conversions) as the estimator's input."""
    contract = metadata.contract()
    if contract.dataframe:
        import pandas as pd

        return pd.DataFrame.from_records(rows, columns=list(contract.names))
    return np.array(rows, dtype=np.float64 if contract.numeric else object)


def _stored_held_out(
    root: Path, metadata: ModelMetadata
) -> tuple[tuple[Any, str] | None, str | None]:
    from app.training_rows import stored_held_out_matrix  # here: it imports app.training

    try:
        matrix, source = stored_held_out_matrix(root, metadata)
    except ArtifactError as exc:
        return None, str(exc)
    return (matrix, source), None


@dataclass(frozen=True)
class Candidate:
    """One way to compile an estimator: the twin's runtime and how it reads its input, and
    ``build``, which converts it (and raises for a model its converter does not know)."""

    runtime: TwinRuntime
    sklearn_steps: int
    precision: Literal["float64", "float32"]
    scores: bool
    build: Callable[[], bytes]


def _candidates(metadata: ModelMetadata, estimator: Any) -> list[Candidate]:
    """The candidates for ``estimator``, in the order they are tried."""
    steps = list(getattr(estimator, "steps", ()))
    last = steps[-1][1] if steps else estimator
    kept = len(steps) - 1 if steps else 0
    if _kind(last) in TREE_ENSEMBLES:
        precision: Literal["float64", "float32"] = (
            "float32" if _kind(last) in ROUNDS_TO_FLOAT32 else "float64"
        )
        return [Candidate("treelite", kept, precision, False, lambda: _treelite(last))]
    surrogate = _decision_function(last)
    scores = surrogate is not None
    final = last if surrogate is None else surrogate
    candidates = []
    contract = metadata.contract()
    if contract.numeric and not contract.dataframe:
        whole = estimator if not kept and surrogate is None else _pipeline(steps, final)
        width = len(metadata.features)
        candidates.append(
            Candidate("onnxruntime", 0, "float64", scores, lambda: _onnx(whole, width))
        )
    if kept:
        prefix = estimator[:kept]
        candidates.append(
            Candidate(
                "onnxruntime",
                kept,
                "float64",
                scores,
                lambda: _onnx(final, _width_after(prefix, metadata)),
            )
        )
    return candidates


def _decision_function(estimator: Any) -> Any:
    """For a linear classifier without probabilities (RidgeClassifier, LinearSVC), a linear
    regression with its coefficients: its output is the classifier's decision function, which
    skl2onnx converts in float64 (it converts those classifiers in float32 only). None for any
    other estimator."""
    from sklearn.base import is_classifier
    from sklearn.linear_model import LinearRegression

    linear = all(hasattr(estimator, a) for a in ("coef_", "intercept_", "decision_function"))
    if not linear or not is_classifier(estimator) or hasattr(estimator, "predict_proba"):
        return None
    surrogate = LinearRegression()
    surrogate.coef_ = np.asarray(estimator.coef_, dtype=np.float64)
    surrogate.intercept_ = np.asarray(estimator.intercept_, dtype=np.float64)
    surrogate.n_features_in_ = surrogate.coef_.shape[-1]
    return surrogate


def _pipeline(steps: list[tuple[str, Any]], final: Any) -> Any:
    """The pipeline's steps with ``final`` in place of its last (or ``final`` alone)."""
    if not steps:
        return final
    from sklearn.pipeline import Pipeline

    return Pipeline([*steps[:-1], (steps[-1][0], final)])


def _onnx(estimator: Any, width: int) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType

    options = {"zipmap": False} if hasattr(estimator, "predict_proba") else None
    initial = [("X", DoubleTensorType([None, width]))]
    return to_onnx(estimator, initial_types=initial, options=options).SerializeToString()  # type: ignore[no-any-return]


def _treelite(estimator: Any) -> bytes:
    import treelite.sklearn

    return bytes(treelite.sklearn.import_model(estimator).serialize_bytes())


def _width_after(prefix: Any, metadata: ModelMetadata) -> int:
    """How many columns the kept steps give, on the reference sample's first row."""
    sample = reference_matrix(metadata)
    if sample is None:
        raise ArtifactError("no reference row to learn the width of the kept steps' output")
    return int(prefix.transform(sample[:1]).shape[1])


def now() -> datetime:
    return datetime.now(UTC)


def _runtime_version(runtime: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(runtime)


def _kind(estimator: Any) -> str:
    return type(estimator).__name__


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _proven(twin: CompiledTwin) -> str:
    proof = twin.proof
    kept = f", {twin.sklearn_steps} step(s) kept in scikit-learn" if twin.sklearn_steps else ""
    kept += ", its decision function" if twin.scores else ""
    held = (
        f"{proof.held_out_rows} held-out rows ({proof.held_out_source})"
        if proof.held_out_rows
        else f"no held-out rows ({proof.held_out_note})"
    )
    return (
        f"{twin.runtime} {twin.runtime_version} ({twin.precision}{kept}): equal on "
        f"{proof.reference_rows} reference rows and {held}, largest difference "
        f"{proof.max_difference:.2g}"
    )
