"""A version's compiled twin, serving: read it (its sha256 checked), run it, compare it.

A twin answers what its estimator answers, through a faster runtime: ONNX Runtime for a model
skl2onnx converts, Treelite's GTIL for a tree ensemble. ``sklearn_steps`` leading steps of a
pipeline (a ColumnTransformer with its one-hot encoders, say) stay in scikit-learn and feed the
twin their output. ``precision`` float32 rounds the input as scikit-learn's decision trees do
before comparing it with their thresholds (ONNX twins are float64 only: float32 arithmetic
would flip labels near a decision boundary). A linear classifier without probabilities
(RidgeClassifier, LinearSVC) has a twin of its decision function (``scores``), read as
scikit-learn reads it: the sign for two classes, the largest score otherwise.

``compare`` is the proof (app/compiling.py runs it when compiling, app/loading.py again when
loading, on the reference rows): identical labels, and probabilities within
``PROBABILITY_TOLERANCE``, values within ``VALUE_TOLERANCE`` relative to their size (at
least 1).
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.artifacts import CompiledTwin, ModelMetadata

PROBABILITY_TOLERANCE = 1e-6
"""Largest difference allowed between a twin's probability and its estimator's. ONNX Runtime
in float64 differs by about 1e-16; Treelite's softmax by up to about 1e-7."""
VALUE_TOLERANCE = 1e-6
"""Largest difference allowed between a twin's regression value and its estimator's, relative
to the value (or absolute, under 1)."""


class TwinMismatch(ValueError):
    """A twin that does not answer what its estimator answers."""


@dataclass(frozen=True, eq=False)
class Twin:
    """A compiled twin ready to run: ``predict`` and ``predict_proba`` like its estimator."""

    record: CompiledTwin
    prefix: Any  # the pipeline steps kept in scikit-learn, or None
    runner: Any  # an onnxruntime.InferenceSession or a treelite.Model
    classes: list[Any] | None  # the estimator's own classes_, as its predict gives them
    # The training range of the numeric and date features (their positions, lowest, highest
    # values): the twin was proven inside it, so it answers only rows inside it.
    ranged: list[int] = field(default_factory=list)
    low: npt.NDArray[np.float64] | None = None
    high: npt.NDArray[np.float64] | None = None

    @property
    def runtime(self) -> str:
        return self.record.runtime

    def covered(self, matrix: Any) -> npt.NDArray[np.bool_]:
        """Per row of ``matrix``, whether its every ranged value (missing ones aside) lies in
        its feature's training range: the rows the twin answers (app/prediction.py)."""
        if self.low is None or self.high is None:
            return np.ones(len(matrix), dtype=bool)
        if isinstance(matrix, np.ndarray) and matrix.dtype == np.float64:
            values = matrix if len(self.ranged) == matrix.shape[1] else matrix[:, self.ranged]
        elif isinstance(matrix, np.ndarray):
            values = matrix[:, self.ranged].astype(np.float64)
        else:  # a DataFrame
            values = matrix.iloc[:, self.ranged].to_numpy(dtype=np.float64)
        outside = ((values < self.low) | (values > self.high)).any(axis=1)
        return np.asarray(~outside, dtype=bool)

    def predict(self, matrix: Any) -> npt.NDArray[Any]:
        """Labels (the estimator's own classes, of their own type) or values."""
        if self.record.runtime == "treelite":
            scores = self._treelite(matrix)
            return scores[:, 0] if self.classes is None else self._labels(scores.argmax(axis=1))
        output = np.asarray(self._onnx(matrix)[0])
        if self.classes is None:
            return output.ravel()
        if self.record.scores:  # a decision function: as LinearClassifierMixin.predict reads it
            scores = output.reshape(len(output), -1)
            best = (scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else scores.argmax(1)
            return self._labels(best)
        same = {label: label for label in self.classes}  # ONNX's 0 for a class 0.0 or False
        return np.array([same[label] for label in output.ravel().tolist()], dtype=object)

    def predict_proba(self, matrix: Any) -> npt.NDArray[np.float64]:
        if self.record.runtime == "onnxruntime":
            return np.asarray(self._onnx(matrix)[1], dtype=np.float64)
        return self._treelite(matrix)

    def _labels(self, positions: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
        classes = self.classes or []
        return np.array([classes[i] for i in positions.tolist()], dtype=object)

    def _input(self, matrix: Any) -> npt.NDArray[Any]:
        if self.prefix is not None:
            matrix = self.prefix.transform(matrix)
            if hasattr(matrix, "toarray"):  # a sparse one-hot encoding
                matrix = matrix.toarray()
        values = np.asarray(matrix, dtype=np.float64)
        if self.record.precision == "float64":
            return values
        with np.errstate(over="ignore"):
            rounded = values.astype(np.float32)
        if np.isinf(rounded).any() and not np.isinf(values).any():
            raise ValueError("a value beyond float32's range")  # scikit-learn refuses it too
        return rounded

    def _onnx(self, matrix: Any) -> list[Any]:
        return self.runner.run(None, {"X": self._input(matrix)})  # type: ignore[no-any-return]

    def _treelite(self, matrix: Any) -> npt.NDArray[np.float64]:
        import treelite.gtil

        values = self._input(matrix)
        if values.dtype == np.float32:  # rounded as the trees round it; GTIL takes float64
            values = values.astype(np.float64)
        scores = np.asarray(treelite.gtil.predict(self.runner, values, nthread=1), np.float64)
        scores = scores.reshape(len(values), -1)
        if self.classes is not None and scores.shape[1] == 1 and len(self.classes) == 2:
            scores = np.hstack([1.0 - scores, scores])  # a binary model scores the second class
        return scores


def open_twin(record: CompiledTwin, data: bytes, estimator: Any, metadata: ModelMetadata) -> Twin:
    """The twin in ``data`` (already checked against ``record.sha256``), ready to run."""
    prefix = estimator[: record.sklearn_steps] if record.sklearn_steps else None
    classes = estimator.classes_.tolist() if metadata.task == "classification" else None
    if record.runtime == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One thread, no spinning: the server's concurrency is its own (batching, one core per
        # process); a thread pool per session would only compete with it.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # its shape warnings are about declared, not real, shapes
        runner: Any = onnxruntime.InferenceSession(
            data, options, providers=["CPUExecutionProvider"]
        )
    else:
        import treelite

        runner = treelite.Model.deserialize_bytes(data)
    ranged = [
        (index, feature.min, feature.max)
        for index, feature in enumerate(metadata.features)
        if feature.dtype in ("float", "int", "date")
        and feature.min is not None
        and feature.max is not None
    ]
    if not ranged:
        return Twin(record, prefix, runner, classes)
    positions, low, high = zip(*ranged, strict=True)
    return Twin(record, prefix, runner, classes, list(positions), np.array(low), np.array(high))


def compare(twin: Twin, estimator: Any, metadata: ModelMetadata, matrix: Any) -> float:
    """The largest difference between twin and estimator on ``matrix`` (see the module's
    tolerances); TwinMismatch, saying where, when they differ beyond them or on a label."""
    if metadata.task == "classification" and metadata.has_proba:
        expected = np.asarray(estimator.predict_proba(matrix), dtype=np.float64)
        got = twin.predict_proba(matrix)
        _same_shape(expected, got)
        if not np.isfinite(got).all():
            raise TwinMismatch("the twin returned a non-finite probability")
        labels_differ = expected.argmax(axis=1) != got.argmax(axis=1)
        difference = float(np.abs(expected - got).max(initial=0.0))
        tolerance = PROBABILITY_TOLERANCE
    else:
        expected = np.asarray(estimator.predict(matrix))
        got = twin.predict(matrix)
        _same_shape(expected, got)
        if metadata.task == "classification":  # of the same type too: 0.0 and 0 serve apart
            labels_differ = np.array(_differ(expected.tolist(), got.tolist()), dtype=bool)
            difference = 0.0
        else:
            expected, got = expected.astype(np.float64), got.astype(np.float64)
            if not np.isfinite(got).all():
                raise TwinMismatch("the twin returned a non-finite value")
            labels_differ = np.zeros(len(expected), dtype=bool)
            scale = np.maximum(1.0, np.abs(expected))
            difference = float((np.abs(expected - got) / scale).max(initial=0.0))
        tolerance = VALUE_TOLERANCE
    if labels_differ.any():
        row = int(np.flatnonzero(labels_differ)[0])
        raise TwinMismatch(
            f"{int(labels_differ.sum())} of {len(labels_differ)} labels differ (first: row {row})"
        )
    if not difference <= tolerance:  # NaN (an estimator answering NaN) is not equal either
        raise TwinMismatch(f"outputs differ by {difference:.3g}, over the {tolerance:g} allowed")
    return difference


def _differ(expected: list[Any], got: list[Any]) -> list[bool]:
    """Per label, whether the two differ in value or in type (JSON writes 0.0, 0, false)."""
    return [type(a) is not type(b) or a != b for a, b in zip(expected, got, strict=True)]


def _same_shape(expected: npt.NDArray[Any], got: npt.NDArray[Any]) -> None:
    if expected.shape != got.shape:
        raise TwinMismatch(f"the twin answers shape {got.shape}, the estimator {expected.shape}")
