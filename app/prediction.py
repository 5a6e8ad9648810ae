"""Rows -> feature matrix in metadata order -> one model call -> ids -> prediction log."""

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import numpy as np
from pydantic import BaseModel

from app.artifacts import Label, Row, feature_matrix
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
from app.schemas import Prediction, PredictResponse, parse_json
from app.store import PredictionLog, PredictionRecord


def instance_rows(instances: Sequence[BaseModel]) -> list[Row]:
    """Validated instances as value tuples in feature order (fields are f0..fN, in order)."""
    return [tuple(vars(instance).values()) for instance in instances]


def infer(
    model: LoadedModel, rows: Sequence[Row]
) -> tuple[list[Label], list[dict[str, float]] | None]:
    """One model call for all rows: labels or values, and class probabilities when available."""
    metadata = model.metadata
    matrix = feature_matrix(metadata, rows)
    if metadata.task == "classification" and metadata.has_proba and metadata.classes:
        proba = np.asarray(model.estimator.predict_proba(matrix), dtype=np.float64)
        classes = metadata.classes
        keys = [str(c) for c in classes]
        labels = [classes[i] for i in proba.argmax(axis=1).tolist()]
        return labels, [dict(zip(keys, row, strict=True)) for row in proba.tolist()]
    raw = np.asarray(model.estimator.predict(matrix))
    if raw.shape != (len(rows),):
        raise ValueError(f"expected {len(rows)} predictions, got shape {raw.shape}")
    if metadata.task == "regression" and not np.isfinite(raw.astype(np.float64)).all():
        raise ValueError("the model returned a non-finite value")
    return raw.tolist(), None


class Predictor:
    """Serves /predict: resolve the model, validate the body, infer, log, count."""

    def __init__(
        self, registry: Registry, log: PredictionLog, metrics: Metrics, default_model: str | None
    ) -> None:
        self.registry = registry
        self.log = log
        self.metrics = metrics
        self.default_model = default_model

    async def predict(self, name: str | None, version: str | None, body: bytes) -> PredictResponse:
        model = await self._resolve(name, version)
        rows = self._validate(model, body)
        try:
            started = time.perf_counter()
            labels, probabilities = await anyio.to_thread.run_sync(infer, model, rows)
            elapsed = time.perf_counter() - started
        except Exception as exc:
            self.metrics.count_error(model.name, "model")
            raise ModelFailure(f"{model.name} v{model.version} failed: {exc}") from exc
        ids = [uuid.uuid4().hex for _ in rows]
        self._log(model, ids, rows, labels, probabilities)
        self.metrics.observe_inference(model.metadata, elapsed, labels)
        probs: Sequence[dict[str, float] | None] = probabilities or [None] * len(rows)
        return PredictResponse(
            model=model.name,
            version=model.version,
            predictions=[
                Prediction(id=i, prediction=label, probabilities=p)
                for i, label, p in zip(ids, labels, probs, strict=True)
            ],
        )

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

    def _log(
        self,
        model: LoadedModel,
        ids: Sequence[str],
        rows: Sequence[Row],
        labels: Sequence[Label],
        probabilities: Sequence[dict[str, float]] | None,
    ) -> None:
        now = datetime.now(UTC)
        names = [f.name for f in model.metadata.features]
        records = []
        for index, (prediction_id, row, label) in enumerate(zip(ids, rows, labels, strict=True)):
            output: dict[str, Any] = {"prediction": label}
            if probabilities is not None:
                output["probabilities"] = probabilities[index]
            records.append(
                PredictionRecord(
                    id=prediction_id,
                    model=model.name,
                    version=model.version,
                    created_at=now,
                    inputs=dict(zip(names, row, strict=True)),
                    output=output,
                )
            )
        try:
            self.log.append(records)
        except StoreUnavailable:
            self.metrics.count_error(model.name, "store")
            raise
