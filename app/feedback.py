"""Ground truth -> join with the logged prediction -> outcome -> stored once -> metrics.

Sending the same ground truth again is accepted and counted once ("duplicate"); a different
one for a labelled prediction is a conflict (409); an unknown id is 404; a label the model
cannot produce is 422. In a batch each item gets its own result.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import anyio.to_thread

from app.artifacts import ModelMetadata
from app.errors import (
    FeedbackConflict,
    StewardError,
    StoreUnavailable,
    UnknownPrediction,
    ValidationFailed,
)
from app.metrics import Metrics
from app.registry import Registry
from app.schemas import (
    ErrorBody,
    FeedbackBatchResponse,
    FeedbackItem,
    FeedbackItemResult,
    FeedbackResult,
)
from app.store import Label, PredictionLog, PredictionStore, StoredPrediction

Outcome = FeedbackResult | StewardError


class FeedbackRecorder:
    def __init__(
        self,
        registry: Registry,
        store: PredictionStore,
        log: PredictionLog,
        metrics: Metrics,
        max_items: int,
    ) -> None:
        self.registry = registry
        self.store = store
        self.log = log
        self.metrics = metrics
        self.max_items = max_items

    async def record_one(self, item: FeedbackItem) -> FeedbackResult:
        """Record one item; its error, if any, is raised."""
        (outcome,) = await anyio.to_thread.run_sync(self.record, [item])
        if isinstance(outcome, StewardError):
            raise outcome
        return outcome

    async def record_batch(self, items: Sequence[FeedbackItem]) -> FeedbackBatchResponse:
        """Record every item; failures are reported per item, the rest are accepted."""
        if len(items) > self.max_items:
            raise ValidationFailed(
                f"at most {self.max_items} feedback items per request",
                [{"field": "items", "message": f"{len(items)} items", "type": "too_long"}],
            )
        outcomes = await anyio.to_thread.run_sync(self.record, items)
        results = []
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, StewardError):
                error = ErrorBody(
                    code=outcome.code, message=outcome.message, details=outcome.details
                )
                results.append(
                    FeedbackItemResult(
                        prediction_id=item.prediction_id, status="error", error=error
                    )
                )
            else:
                results.append(FeedbackItemResult(**outcome.model_dump()))
        return FeedbackBatchResponse(
            accepted=sum(r.status == "accepted" for r in results),
            duplicate=sum(r.status == "duplicate" for r in results),
            failed=sum(r.status == "error" for r in results),
            results=results,
        )

    def record(self, items: Sequence[FeedbackItem]) -> list[Outcome]:
        """Blocking: join, judge, label in one transaction, then count what changed."""
        ids = {item.prediction_id for item in items}
        self.log.flush_if_pending(ids)  # an id is valid as soon as its response was sent
        stored = self.store.get_predictions(ids)
        judged = [self._judge(item, stored.get(item.prediction_id)) for item in items]
        labelled = self.store.label([j for j in judged if isinstance(j, Label)])
        results: list[Outcome] = []
        for item, outcome in zip(items, judged, strict=True):
            if not isinstance(outcome, Label):
                results.append(outcome)
            elif outcome.prediction_id in labelled:
                labelled.discard(outcome.prediction_id)  # a repeated id is labelled once
                results.append(self._accepted(stored[outcome.prediction_id], outcome))
            else:  # labelled meanwhile, by another request or earlier in this batch
                fresh = self.store.get_predictions([item.prediction_id])
                again = self._judge(item, fresh.get(item.prediction_id))
                if isinstance(again, Label):
                    again = StoreUnavailable("the store did not record the feedback")
                results.append(again)
        return results

    def _judge(self, item: FeedbackItem, prediction: StoredPrediction | None) -> Outcome | Label:
        if prediction is None:
            self.metrics.count_error(None, "feedback")
            return UnknownPrediction(
                f"no prediction with id {item.prediction_id!r}",
                [{"field": "prediction_id", "message": "unknown id"}],
            )
        metadata = self.registry.metadata(prediction.model, prediction.version)
        problem = _ground_truth_problem(metadata, item.ground_truth)
        if problem is not None:
            self.metrics.observe_feedback(metadata, "invalid")
            return ValidationFailed(problem, [{"field": "ground_truth", "message": problem}])
        if prediction.ground_truth is not None:
            if prediction.ground_truth == item.ground_truth:
                self.metrics.observe_feedback(metadata, "duplicate")
                return FeedbackResult(
                    prediction_id=item.prediction_id,
                    status="duplicate",
                    model=prediction.model,
                    version=prediction.version,
                )
            self.metrics.observe_feedback(metadata, "conflict")
            return FeedbackConflict(
                f"prediction {item.prediction_id!r} already has ground truth "
                f"{prediction.ground_truth!r}",
                [{"field": "ground_truth", "message": f"recorded: {prediction.ground_truth!r}"}],
            )
        predicted = prediction.output["prediction"]
        classification = metadata.task == "classification"
        return Label(
            prediction_id=item.prediction_id,
            ground_truth=item.ground_truth,
            correct=predicted == item.ground_truth if classification else None,
            abs_error=None if classification else abs(float(predicted) - float(item.ground_truth)),
            at=datetime.now(UTC),
        )

    def _accepted(self, prediction: StoredPrediction, label: Label) -> FeedbackResult:
        metadata = self.registry.metadata(prediction.model, prediction.version)
        if metadata.task == "classification":
            outcome = "correct" if label.correct else "incorrect"
        else:
            outcome = "labelled"
        predicted = prediction.output["prediction"]
        self.metrics.observe_feedback(metadata, outcome, predicted, label.ground_truth)
        return FeedbackResult(
            prediction_id=prediction.id,
            status="accepted",
            model=prediction.model,
            version=prediction.version,
        )


def _ground_truth_problem(metadata: ModelMetadata, ground_truth: object) -> str | None:
    if metadata.task == "classification":
        classes = metadata.classes or []
        if ground_truth not in classes or isinstance(ground_truth, bool):
            shown = ", ".join(repr(c) for c in classes[:20])
            return f"ground_truth {ground_truth!r} is not one of the model's classes: {shown}"
        return None
    if isinstance(ground_truth, str):
        return f"ground_truth must be a number for regressor {metadata.name}"
    return None
