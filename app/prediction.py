"""Rows -> feature matrix in metadata order -> one model call per batch -> ids -> log."""

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio.to_thread
import numpy as np
import orjson
from pydantic import BaseModel

from app.artifacts import Label, Row, feature_matrix
from app.batching import Batcher, BatchStats
from app.errors import (
    InvalidJSON,
    ModelFailure,
    ModelUnavailable,
    StoreUnavailable,
    UnknownModel,
    UnknownVersion,
    ValidationFailed,
)
from app.metrics import Metrics
from app.registry import LoadedModel, Registry
from app.schemas import parse_json
from app.store import PredictionLog, PredictionRecord


def instance_rows(instances: Sequence[BaseModel]) -> list[Row]:
    """Validated instances as value tuples in feature order (fields are f0..fN, in order)."""
    return [tuple(vars(instance).values()) for instance in instances]


RowOutput = tuple[Label, dict[str, float] | None]  # prediction, class probabilities if any


def infer(model: LoadedModel, rows: Sequence[Row]) -> list[RowOutput]:
    """One model call for all rows: label or value, and class probabilities when available."""
    metadata = model.metadata
    matrix = feature_matrix(metadata, rows)
    if metadata.task == "classification" and metadata.has_proba and metadata.classes:
        proba = np.asarray(model.estimator.predict_proba(matrix), dtype=np.float64)
        classes, keys = metadata.classes, model.class_keys
        return [
            (classes[best], dict(zip(keys, row, strict=True)))
            for best, row in zip(proba.argmax(axis=1).tolist(), proba.tolist(), strict=True)
        ]
    raw = np.asarray(model.estimator.predict(matrix))
    if raw.shape != (len(rows),):
        raise ValueError(f"expected {len(rows)} predictions, got shape {raw.shape}")
    if metadata.task == "regression" and not np.isfinite(raw.astype(np.float64)).all():
        raise ValueError("the model returned a non-finite value")
    return [(label, None) for label in raw.tolist()]


def new_ids(count: int) -> list[str]:
    """``count`` prediction ids: UUIDv7 (RFC 9562) as 32 hex digits.

    74 random bits make an id unguessable; the leading millisecond timestamp makes ids arrive
    in order, so the log's primary-key index grows at its end instead of rewriting a random
    page per row (random ids cut SQLite's insert rate by four as the log grows; see bench/).
    """
    millis = time.time_ns() // 1_000_000
    head = (millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76  # timestamp, version 7
    noise = os.urandom(10 * count)
    ids = []
    for start in range(0, 10 * count, 10):
        bits = int.from_bytes(noise[start : start + 10])
        rand_a, rand_b = bits >> 68, bits & 0x3FFF_FFFF_FFFF_FFFF  # 12 and 62 random bits
        ids.append(f"{head | rand_a << 64 | 0b10 << 62 | rand_b:032x}")  # variant 10
    return ids


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
    ) -> None:
        self.registry = registry
        self.log = log
        self.metrics = metrics
        self.default_model = default_model
        self.log_wait = log_wait
        self.batcher: Batcher[LoadedModel, Row, RowOutput] = Batcher(
            infer,
            max_rows=batch_max_rows,
            max_wait=batch_max_wait,
            inline_max=batch_inline_max,
            on_batch=self._observe,
        )

    async def predict(self, name: str | None, version: str | None, body: bytes) -> bytes:
        """The JSON response body for a /predict request."""
        model = await self._resolve(name, version)
        rows = self._validate(model, body)
        try:
            outputs = await self.batcher.run(model, rows)
        except Exception as exc:
            self.metrics.count_error(model.name, "model")
            raise ModelFailure(f"{model.name} v{model.version} failed: {exc}") from exc
        ids = new_ids(len(rows))
        await self._log(model, ids, rows, outputs)
        self.metrics.series(model.metadata).count_predictions([label for label, _ in outputs])
        return orjson.dumps(
            {
                "model": model.name,
                "version": model.version,
                "predictions": [
                    {"id": i, "prediction": label, "probabilities": probabilities}
                    if probabilities is not None
                    else {"id": i, "prediction": label}
                    for i, (label, probabilities) in zip(ids, outputs, strict=True)
                ],
            }
        )

    async def close(self) -> None:
        await self.batcher.close()

    def _observe(self, model: LoadedModel, batch: BatchStats) -> None:
        self.metrics.series(model.metadata).observe_batch(batch.rows, batch.seconds)

    async def _resolve(self, name: str | None, version: str | None) -> LoadedModel:
        try:
            name = name or self.registry.default_name(self.default_model)
            model = self.registry.cached(name, version)
            if model is None:
                model = await anyio.to_thread.run_sync(self.registry.resolve, name, version)
        except UnknownModel:
            self.metrics.count_error(None, "unknown_model")
            raise
        except UnknownVersion:
            self.metrics.count_error(name, "unknown_version")
            raise
        except ModelUnavailable:
            self.metrics.count_error(name, "model")
            raise
        return model

    def _validate(self, model: LoadedModel, body: bytes) -> list[Row]:
        try:
            request = parse_json(model.request_model.model_validate_json, body)
        except (InvalidJSON, ValidationFailed):
            self.metrics.count_error(model.name, "validation")
            raise
        instances: list[BaseModel] = request.instances  # type: ignore[attr-defined]
        return instance_rows(instances)

    async def _log(
        self,
        model: LoadedModel,
        ids: Sequence[str],
        rows: Sequence[Row],
        outputs: Sequence[RowOutput],
    ) -> None:
        now = datetime.now(UTC)
        names = model.feature_names
        records = [
            PredictionRecord(
                id=prediction_id,
                model=model.name,
                version=model.version,
                created_at=now,
                inputs=dict(zip(names, row, strict=True)),
                output={"prediction": label}
                if probabilities is None
                else {"prediction": label, "probabilities": probabilities},
            )
            for prediction_id, row, (label, probabilities) in zip(ids, rows, outputs, strict=True)
        ]
        try:
            await self.log.put(records, self.log_wait)
        except StoreUnavailable:
            self.metrics.count_error(model.name, "store")
            raise
