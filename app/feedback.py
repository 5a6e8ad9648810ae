"""Ground truth -> join with the logged prediction -> outcome -> stored once -> metrics.

A served row's shadow predictions (another version's, never returned) are labelled with the
same ground truth in the served row's transaction, only when its label lands
(app/shadow_feedback.py judges and counts them); what the client is answered is the served
row's alone.

Sending the same ground truth again is accepted and counted once ("duplicate"); a different
one for a labelled prediction is a conflict (409); an unknown id is 404; a label the model
cannot produce is 422. In a batch each item gets its own result.

An id this process does not hold may still wait in another worker's or replica's buffer: where
another process can hold it, a recent one is looked for again, for a bounded time and by a
bounded number of requests at once, before it is unknown (app/late_predictions.py).

What ground truth a version accepts, and a regressor's error against it, is
app/ground_truth.py's: no metric ever receives a value that is not finite.
"""

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import anyio.to_thread

from app.errors import (
    FeedbackConflict,
    InvalidGroundTruth,
    StewardError,
    StoreUnavailable,
    UnknownPrediction,
    ValidationFailed,
)
from app.ground_truth import HARD_LIMIT, abs_error, ground_truth_problem
from app.late_predictions import LateRows
from app.loading import LoadedModel
from app.metrics import Metrics
from app.registry import Registry
from app.schemas import (
    FEEDBACK_FORMS,
    FEEDBACK_REQUEST,
    ErrorBody,
    FeedbackBatch,
    FeedbackBatchResponse,
    FeedbackItem,
    FeedbackItemResult,
    FeedbackResult,
    parse_json,
)
from app.shadow import Shadows
from app.shadow_feedback import ShadowScorer
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
        target_range_multiple: float,
        shadows: Shadows | None = None,
        shadow_wait: float = 2.0,
        late: LateRows | None = None,
    ) -> None:
        """``shadows``: the shadow predictions still running, which feedback for their rows
        waits for (up to ``shadow_wait`` seconds), so that one transaction labels both.
        ``late``: the bounded wait for an id missing from the store that another process may
        not have written yet; None: unknown at once."""
        self.registry = registry
        self.store = store
        self.log = log
        self.metrics = metrics
        self.max_items = max_items
        self.target_range_multiple = target_range_multiple
        self.shadows = shadows
        self.shadow_wait = shadow_wait
        self.late = late
        self.shadow_scores = ShadowScorer(registry, metrics.shadow)

    async def receive(self, body: bytes) -> FeedbackResult | FeedbackBatchResponse:
        """A /feedback body: one item (its error raised), or a batch (``items``: a result per
        item). A body that is not JSON, or neither form, is InvalidJSON or ValidationFailed."""
        request = parse_json(FEEDBACK_REQUEST.validate_json, body, FEEDBACK_FORMS)
        if isinstance(request, FeedbackBatch):
            return await self.record_batch(request.items)
        return await self.record_one(request)

    async def record_one(self, item: FeedbackItem) -> FeedbackResult:
        """Record one item; its error, if any, is raised."""
        (outcome,) = await self._record([item])
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
        outcomes = await self._record(items)
        results = []
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, StewardError):
                self.metrics.count_error(outcome.model, outcome.stage)  # as a single one would be
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

    async def _record(self, items: Sequence[FeedbackItem]) -> list[Outcome]:
        """``record`` off the event loop; the items whose id was unknown but recent are
        recorded again once their rows appear (another process wrote them meanwhile)."""
        running = await self._settle(items)
        outcomes = await anyio.to_thread.run_sync(self.record, items, running)
        unknown = [i for i, o in enumerate(outcomes) if isinstance(o, UnknownPrediction)]
        if not unknown or self.late is None:
            return outcomes
        found = await self.late.arrived(
            list(dict.fromkeys(items[i].prediction_id for i in unknown))
        )
        again = [i for i in unknown if items[i].prediction_id in found]
        if again:
            retried = await anyio.to_thread.run_sync(
                self.record, [items[i] for i in again], running
            )
            for i, outcome in zip(again, retried, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _settle(self, items: Sequence[FeedbackItem]) -> Mapping[str, LoadedModel]:
        """Let the shadows of these rows still running be logged first (on the event loop,
        bounded), so the label reaches them in the same transaction; the rows whose shadow is
        still running after that, with the candidate shadowing them."""
        if self.shadows is None:
            return {}
        return await self.shadows.settled({i.prediction_id for i in items}, self.shadow_wait)

    def record(
        self, items: Sequence[FeedbackItem], running: Mapping[str, LoadedModel] | None = None
    ) -> list[Outcome]:
        """Blocking: join, judge, label in one transaction, then count what changed.
        ``running``: rows whose shadow was still running when feedback stopped waiting."""
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
                prediction = stored[outcome.prediction_id]
                results.append(self._accepted(prediction, outcome))
                candidate = (running or {}).get(prediction.id)
                self.shadow_scores.count(prediction, outcome, labelled, candidate)
            else:  # labelled meanwhile, by another request or earlier in this batch
                fresh = self.store.get_predictions([item.prediction_id])
                again = self._judge(item, fresh.get(item.prediction_id))
                if isinstance(again, Label):
                    again = StoreUnavailable("the store did not record the feedback")
                results.append(again)
        return results

    def _judge(self, item: FeedbackItem, prediction: StoredPrediction | None) -> Outcome | Label:
        if prediction is None:
            return UnknownPrediction(
                "no prediction with this id",
                [{"field": "prediction_id", "message": "unknown id", "type": "unknown"}],
            )
        metadata = self.registry.metadata(prediction.model, prediction.version)
        problem = ground_truth_problem(metadata, item.ground_truth, self.target_range_multiple)
        if problem is not None:
            self.metrics.observe_feedback(metadata, "invalid")
            return InvalidGroundTruth(problem[0], [_detail("ground_truth", *problem)])
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
            message = "a different ground truth is already recorded for this prediction"
            return FeedbackConflict(message, [_detail("ground_truth", message, "conflict")])
        predicted = prediction.output["prediction"]
        if metadata.task == "classification":
            correct, error = predicted == item.ground_truth, None
        else:
            correct, error = None, abs_error(predicted, item.ground_truth)
            if error is None:
                self.metrics.observe_feedback(metadata, "invalid")
                message = (
                    f"the logged prediction cannot be scored: its error would exceed {HARD_LIMIT:g}"
                )
                return InvalidGroundTruth(
                    message, [_detail("prediction_id", message, "unscorable")]
                )
        at = datetime.now(UTC)
        return Label(
            prediction_id=item.prediction_id,
            ground_truth=item.ground_truth,
            correct=correct,
            abs_error=error,
            at=at,
            shadows=self.shadow_scores.labels(prediction, item.ground_truth, at),
        )

    def _accepted(self, prediction: StoredPrediction, label: Label) -> FeedbackResult:
        metadata = self.registry.metadata(prediction.model, prediction.version)
        if metadata.task == "classification":
            outcome = "correct" if label.correct else "incorrect"
        else:
            outcome = "labelled"
        predicted = prediction.output["prediction"]
        self.metrics.observe_feedback(
            metadata, outcome, predicted, label.ground_truth, label.abs_error
        )
        return FeedbackResult(
            prediction_id=prediction.id,
            status="accepted",
            model=prediction.model,
            version=prediction.version,
        )


def _detail(field: str, message: str, kind: str) -> dict[str, str]:
    return {"field": field, "message": message, "type": kind}
