"""Rows -> feature matrix in metadata order -> one model call per batch -> ids -> log -> result.

A model call that fails, or answers something unservable (NaN probabilities, a value far
outside the training targets), is the input's fault when the model still scores a typical row:
422 ``unscorable_input``, naming the values outside the training range. Otherwise the model is
broken: 500 ``model_failure``.
"""

import hashlib
import logging
import random
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio.to_thread
import numpy as np

from app.batching import Batcher, BatcherClosed, BatchStats
from app.drift_monitor import DriftMonitor
from app.errors import ModelFailure, NotReady, StewardError, UnscorableInput
from app.features import Row
from app.ids import new_ids
from app.loading import LoadedModel, RowOutput
from app.metrics import Metrics
from app.model_entry import ModelEntry
from app.registry import Registry
from app.shadow import Shadows
from app.store import PredictionLog, PredictionRecord

logger = logging.getLogger(__name__)

MAX_DETAILS = 20  # details of an unscorable request: the first out-of-range values


@dataclass(frozen=True, slots=True)
class PredictionResult:
    """What a /predict request gets: the version that served it and, per row in order, its
    prediction id and output. The wire format is the route's (app/api/predict.py)."""

    model: str
    version: int
    ids: list[str]
    outputs: list[RowOutput]


class UnusableOutput(ValueError):
    """The model answered, but not with something to serve: a non-finite probability or
    value, or a regressor's value far outside its training target range."""


FallbackCounter = Callable[[LoadedModel, str, int], None]
"""Counts rows a twin left to scikit-learn: (model, reason, rows)."""


def infer(
    model: LoadedModel, rows: Sequence[Row], count_fallback: FallbackCounter | None = None
) -> list[RowOutput]:
    """One model call for all rows: label or value, and class probabilities when available.

    Through the version's compiled twin when it has one, for the rows whose values all lie in
    their features' training range (where the twin was proven); the other rows, and rows the
    twin fails on or answers something unservable for, go to the estimator, whose answer (or
    failure) is the last word. Each row's answer depends on that row alone, whatever rows
    share its batch. ``count_fallback`` counts the rows the twin left (reasons
    ``out_of_range``, ``error``, ``unusable``)."""
    matrix = model.contract.matrix(rows)
    twin = model.twin
    if twin is None:
        return _outputs(model, model.estimator, matrix)
    covered = twin.covered(matrix)
    if covered.all():
        return _through_twin(model, matrix, count_fallback)
    if count_fallback is not None:
        count_fallback(model, "out_of_range", int((~covered).sum()))
    if not covered.any():
        return _outputs(model, model.estimator, matrix)
    inside, outside = np.flatnonzero(covered), np.flatnonzero(~covered)
    by_twin = _through_twin(model, _take(matrix, inside), count_fallback)
    by_estimator = _outputs(model, model.estimator, _take(matrix, outside))
    answers = dict(zip(inside.tolist(), by_twin, strict=True))
    answers.update(zip(outside.tolist(), by_estimator, strict=True))
    return [answers[row] for row in range(len(rows))]


def _through_twin(
    model: LoadedModel, matrix: Any, count_fallback: FallbackCounter | None
) -> list[RowOutput]:
    try:
        return _outputs(model, model.twin, matrix)
    except Exception as exc:  # scikit-learn answers, or says why it cannot
        if count_fallback is not None:
            reason = "unusable" if isinstance(exc, UnusableOutput) else "error"
            count_fallback(model, reason, len(matrix))
        return _outputs(model, model.estimator, matrix)


def _take(matrix: Any, positions: Any) -> Any:
    return matrix[positions] if isinstance(matrix, np.ndarray) else matrix.iloc[positions]


def _outputs(model: LoadedModel, scorer: Any, matrix: Any) -> list[RowOutput]:
    metadata, count = model.metadata, len(matrix)
    if metadata.task == "classification" and metadata.has_proba and metadata.classes:
        with np.errstate(all="ignore"):  # overflow shows as a non-finite result, checked below
            proba = np.asarray(scorer.predict_proba(matrix), dtype=np.float64)
        if not np.isfinite(proba).all():
            raise UnusableOutput("the model returned a non-finite probability")
        classes, keys = metadata.classes, model.class_keys
        return [
            (classes[best], dict(zip(keys, row, strict=True)))
            for best, row in zip(proba.argmax(axis=1).tolist(), proba.tolist(), strict=True)
        ]
    with np.errstate(all="ignore"):
        raw = np.asarray(scorer.predict(matrix))
    if raw.shape != (count,):
        raise ValueError(f"expected {count} predictions, got shape {raw.shape}")
    if metadata.task == "regression":
        values = raw.astype(np.float64)
        if not np.isfinite(values).all():
            raise UnusableOutput("the model returned a non-finite value")
        bounds = model.output_range
        if bounds is not None and ((values < bounds[0]) | (values > bounds[1])).any():
            raise UnusableOutput("the model returned a value far outside its training targets")
    return [(label, None) for label in raw.tolist()]


def scores_typical_row(model: LoadedModel) -> bool:
    """Whether the model scores a typical row (training medians, known categories): tells a
    broken model from inputs that this model cannot score. Blocking."""
    row = model.contract.typical_row(model.metadata.medians())
    try:
        infer(model, [row])
    except Exception:
        return False
    return True


def in_share(scope: str, key: str | None, percent: float) -> bool:
    """Whether a request falls in a traffic policy's ``percent`` share: at random, or, for a
    ``key``, by a hash of the ``scope`` (the model and its candidate version: each candidate
    draws its own keys) and the key, the same in every process and restart; a larger share
    keeps every key of a smaller one."""
    if percent >= 100.0:
        return True
    if not key:
        return random.random() * 100.0 < percent
    digest = hashlib.blake2b(f"{scope}\0{key}".encode(errors="surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest()) * 100.0 < percent * 2.0**64


class Predictor:
    """Serves /predict: resolve the model, validate the body, infer in batches, log, count."""

    def __init__(
        self,
        registry: Registry,
        log: PredictionLog,
        metrics: Metrics,
        default_model: str | None,
        *,
        batch_max_rows: int,
        batch_max_wait: float,
        batch_inline_max: float,
        log_wait: float,
        shadow_max_pending_rows: int = 1000,
        shadow_window: float = 0.02,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.registry = registry
        self.drift = drift
        self.log = log
        self.metrics = metrics
        self.default_model = default_model
        self.log_wait = log_wait
        self.batcher: Batcher[LoadedModel, Row, RowOutput] = Batcher(
            partial(infer, count_fallback=metrics.count_twin_fallback),
            max_rows=batch_max_rows,
            max_wait=batch_max_wait,
            inline_max=batch_inline_max,
            on_batch=self._observe,
        )
        self._scores_typical_row: weakref.WeakKeyDictionary[LoadedModel, bool] = (
            weakref.WeakKeyDictionary()
        )
        self.shadows = Shadows(
            self.batcher,
            log,
            metrics,
            max_pending_rows=shadow_max_pending_rows,
            window=shadow_window,
        )
        registry.on_unload.append(self._unloaded)

    async def resolve(
        self, name: str | None, version: str | None, key: str | None = None
    ) -> LoadedModel:
        """The loaded version that ``name`` (None: the default model) and ``version`` name; a
        version not loaded yet is loaded in a worker thread.

        With no ``version``, the model's traffic policy decides: production, or under
        ``canary`` its candidate for the policy's share of requests (for a ``key``, always the
        same choice while the policy stands)."""
        entry = self.registry.entry(name or self.registry.default_name(self.default_model))
        if version is None:
            state = entry.state
            canary = state.challenger
            if (
                canary is not None
                and state.traffic.mode == "canary"
                and in_share(f"{entry.name} v{canary.version}", key, state.traffic.percent)
            ):
                return canary
        model = entry.cached(version)
        if model is None:
            model = await anyio.to_thread.run_sync(self.registry.resolve, entry.name, version)
        return model

    async def predict(self, model: LoadedModel, body: bytes) -> PredictionResult:
        """Validate a /predict body for ``model``, predict its rows, log them, count them."""
        try:
            rows = model.rows(body)
            outputs = await self._infer(model, rows)
            ids = new_ids(len(rows))
            await self._log(model, ids, rows, outputs)
        except StewardError as error:
            error.model = model.name  # counted under this model where it is rendered
            raise
        self.metrics.series(model.metadata).count_predictions([label for label, _ in outputs])
        if self.drift is not None:
            self.drift.observe(model, rows, outputs)
        self._shadow(model, ids, rows, body)
        return PredictionResult(model.name, model.version, ids, outputs)

    async def close(self) -> None:
        """Give the shadows under way a moment (best effort), then close the batcher."""
        await self.shadows.close()
        await self.batcher.close()

    def _shadow(self, model: LoadedModel, ids: list[str], rows: list[Row], body: bytes) -> None:
        """Hand the rows production served to the candidate when the policy says ``shadow``."""
        state = self.registry.entry(model.name).state
        if state.traffic.mode != "shadow" or model is not state.production:
            return
        candidate = state.challenger
        if candidate is not None and in_share(model.name, None, state.traffic.percent):
            self.shadows.submit(model, candidate, ids, rows, body)

    async def _infer(self, model: LoadedModel, rows: list[Row]) -> list[RowOutput]:
        try:
            return await self.batcher.run(model, rows)
        except Exception as exc:
            raise await self._failure(model, rows, exc) from exc

    async def _failure(
        self, model: LoadedModel, rows: Sequence[Row], exc: Exception
    ) -> StewardError:
        """422 when the model scores typical rows but not these; 500 when it scores none (asked
        once per version: a model that scored its typical row keeps scoring it)."""
        if isinstance(exc, BatcherClosed):
            return NotReady(str(exc))
        works = self._scores_typical_row.get(model)
        if works is None:
            works = await anyio.to_thread.run_sync(scores_typical_row, model)
            self._scores_typical_row[model] = works
        if works:
            outside = model.contract.outside_training_range(rows)
            reason = "; ".join(sorted({d["field"].split(".", 2)[2] for d in outside}))
            return UnscorableInput(
                f"{model.name} v{model.version} cannot score these inputs"
                + (f" (outside the training range: {reason})" if reason else ""),
                outside[:MAX_DETAILS],
            )
        # The exception's text may quote the client's values (scikit-learn's do): its type only,
        # the text at debug.
        logger.error(
            "%s v%d fails even on a typical row: %s", model.name, model.version, type(exc).__name__
        )
        logger.debug("%s v%d failure: %r", model.name, model.version, exc)
        return ModelFailure(
            f"{model.name} v{model.version} is failing (even on a typical input); "
            "see the server log"
        )

    def _unloaded(self, entry: ModelEntry, model: LoadedModel) -> None:
        """A version left memory: its lane closes once the requests queued on it have run."""
        self.batcher.drop(model)

    def _observe(self, model: LoadedModel, batch: BatchStats) -> None:
        self.metrics.series(model.metadata).observe_batch(batch.rows, batch.seconds)

    async def _log(
        self,
        model: LoadedModel,
        ids: Sequence[str],
        rows: Sequence[Row],
        outputs: Sequence[RowOutput],
    ) -> None:
        now = datetime.now(UTC)
        name, version, names = model.name, model.version, model.contract.names
        records = [  # the writer thread makes the JSON of them
            PredictionRecord(prediction_id, name, version, now, names, row, label, probabilities)
            for prediction_id, row, (label, probabilities) in zip(ids, rows, outputs, strict=True)
        ]
        await self.log.put(records, self.log_wait)
