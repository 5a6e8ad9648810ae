"""Ground truth -> join with the logged prediction -> outcome -> stored once -> metrics.

A served row's shadow predictions (another version's, never returned) are judged against the
same ground truth, each by its own version, and labelled in the served row's transaction, only
when the served row's label lands: both versions are scored on the same labels. What the client
is answered (accepted, duplicate, conflict, invalid) is the served row's alone; a shadow whose
regressor error cannot be scored is left unlabelled and counted as invalid for its version.

Sending the same ground truth again is accepted and counted once ("duplicate"); a different
one for a labelled prediction is a conflict (409); an unknown id is 404; a label the model
cannot produce is 422. In a batch each item gets its own result.

A regressor's ground truth is a finite number within its version's training target range
widened by ``target_range_multiple`` spans on each side, and never beyond ``HARD_LIMIT``; the
error it makes against the logged prediction is within ``HARD_LIMIT`` too, or it is refused: no
metric ever receives a value that is not finite. Messages name the field and the rule, never
the value sent or the ground truth already recorded.
"""

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread

from app.artifacts import ModelMetadata
from app.errors import (
    ArtifactError,
    FeedbackConflict,
    InvalidGroundTruth,
    StewardError,
    StoreUnavailable,
    UnknownPrediction,
    ValidationFailed,
)
from app.features import widen
from app.loading import LoadedModel
from app.metrics import Metrics, ShadowOutcome
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
from app.store import Label, PredictionLog, PredictionStore, StoredPrediction, StoredShadow

logger = logging.getLogger(__name__)

Outcome = FeedbackResult | StewardError

HARD_LIMIT = 1e100
"""Largest |ground truth| and |error| of a regressor, whatever its version knows: an error of
at most 1e100 squares to at most 1e200, so some 1e108 of them still sum to a finite counter."""
SHOWN_CLASSES = 3
"""Classes named as examples when a ground truth is not one of them."""


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
    ) -> None:
        """``shadows``: the shadow predictions still running, which feedback for their rows
        waits for (up to ``shadow_wait`` seconds), so that one transaction labels both."""
        self.registry = registry
        self.store = store
        self.log = log
        self.metrics = metrics
        self.max_items = max_items
        self.target_range_multiple = target_range_multiple
        self.shadows = shadows
        self.shadow_wait = shadow_wait
        self._gone: set[tuple[str, int]] = set()  # shadowing versions found removed

    async def receive(self, body: bytes) -> FeedbackResult | FeedbackBatchResponse:
        """A /feedback body: one item (its error raised), or a batch (``items``: a result per
        item). A body that is not JSON, or neither form, is InvalidJSON or ValidationFailed."""
        request = parse_json(FEEDBACK_REQUEST.validate_json, body, FEEDBACK_FORMS)
        if isinstance(request, FeedbackBatch):
            return await self.record_batch(request.items)
        return await self.record_one(request)

    async def record_one(self, item: FeedbackItem) -> FeedbackResult:
        """Record one item; its error, if any, is raised."""
        running = await self._settle([item])
        (outcome,) = await anyio.to_thread.run_sync(self.record, [item], running)
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
        running = await self._settle(items)
        outcomes = await anyio.to_thread.run_sync(self.record, items, running)
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
                self._count_shadows(prediction, outcome, labelled)
                self._count_late(prediction, (running or {}).get(prediction.id))
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
        problem = _ground_truth_problem(metadata, item.ground_truth, self.target_range_multiple)
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
            correct, abs_error = predicted == item.ground_truth, None
        else:
            correct, abs_error = None, _abs_error(predicted, item.ground_truth)
            if abs_error is None:
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
            abs_error=abs_error,
            at=at,
            shadows=tuple(
                label
                for shadow in prediction.shadows
                if (label := self._judge_shadow(prediction, shadow, item.ground_truth, at))
            ),
        )

    def _judge_shadow(
        self, prediction: StoredPrediction, shadow: StoredShadow, ground_truth: Any, at: datetime
    ) -> Label | None:
        """The label of one shadow of ``prediction``, scored by its own version; None when it
        is labelled already, its version is gone from the registry, or (a regressor's) its
        error cannot be scored. The served row is labelled whatever becomes of its shadows."""
        metadata = self._shadow_metadata(prediction.model, shadow.version)
        if shadow.ground_truth is not None or metadata is None:
            return None
        predicted = shadow.output["prediction"]
        if metadata.task == "classification":
            return Label(shadow.id, ground_truth, predicted == ground_truth, None, at)
        abs_error = _abs_error(predicted, ground_truth)
        if abs_error is None:
            return None
        return Label(shadow.id, ground_truth, None, abs_error, at)

    def _shadow_metadata(self, model: str, version: int) -> ModelMetadata | None:
        """A shadowing version's metadata; None (logged once) when its folder was removed, as
        a discarded candidate's may be."""
        try:
            return self.registry.metadata(model, version)
        except ArtifactError as exc:
            if (model, version) not in self._gone:
                self._gone.add((model, version))
                logger.warning("%s v%d shadowed rows but is gone: %s", model, version, exc)
            return None

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

    def _count_late(self, prediction: StoredPrediction, candidate: LoadedModel | None) -> None:
        """The row was labelled while ``candidate`` still shadowed it: if its shadow did not
        make it into the same transaction, it never will be labelled (``late``)."""
        if candidate is not None and all(
            s.version != candidate.version for s in prediction.shadows
        ):
            self.metrics.count_shadow_failure(candidate.metadata, "late", 1)

    def _count_shadows(
        self, prediction: StoredPrediction, label: Label, labelled: set[str]
    ) -> None:
        """The served row's label landed: count each of its shadows labelled with it (their ids
        are taken from ``labelled``), and beside each the champion's outcome on the same row, so
        that Prometheus compares the two on exactly the same labels. A shadow left unlabelled
        because its error cannot be scored is ``invalid``; the champion is not counted for it."""
        champion = self.registry.metadata(prediction.model, prediction.version)
        scored = {s.prediction_id: s for s in label.shadows}
        for shadow in prediction.shadows:
            metadata = self._shadow_metadata(prediction.model, shadow.version)
            if metadata is None:
                continue
            shadow_label = scored.get(shadow.id)
            if shadow_label is None:
                if shadow.ground_truth is None:
                    self.metrics.observe_shadow_feedback(metadata, "challenger", "invalid")
            elif shadow.id in labelled:
                labelled.discard(shadow.id)
                self.metrics.observe_shadow_feedback(
                    metadata, "challenger", *_pair_outcome(metadata, shadow_label)
                )
                self.metrics.observe_shadow_feedback(
                    champion, "champion", *_pair_outcome(champion, label)
                )


def _pair_outcome(metadata: ModelMetadata, label: Label) -> tuple[ShadowOutcome, float | None]:
    """One side of a shadow pair, as the shadow counters take it."""
    if metadata.task == "classification":
        return ("correct" if label.correct else "incorrect"), None
    return "labelled", label.abs_error


def target_bounds(metadata: ModelMetadata, multiple: float) -> tuple[float, float]:
    """The ground truth a regressor version accepts, as a closed interval.

    Its training target range widened by ``multiple`` spans on each side (a zero span counts as
    the target's magnitude, at least 1), within ±HARD_LIMIT; ±HARD_LIMIT alone when the version
    has no target range (older metadata, registered models) or ``multiple`` is 0.
    """
    bounds = widen(metadata.target_min, metadata.target_max, multiple)
    if bounds is None or not (math.isfinite(bounds[0]) and math.isfinite(bounds[1])):
        return -HARD_LIMIT, HARD_LIMIT
    return max(bounds[0], -HARD_LIMIT), min(bounds[1], HARD_LIMIT)


def _ground_truth_problem(
    metadata: ModelMetadata, ground_truth: object, multiple: float
) -> tuple[str, str] | None:
    """What is wrong with a ground truth for this version, as (rule, type); None if nothing."""
    if metadata.task == "classification":
        classes = metadata.classes or []
        if ground_truth not in classes or isinstance(ground_truth, bool):
            return _not_a_class(classes), "not_a_class"
        return None
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, int | float):
        return "ground_truth must be a number for a regressor", "not_a_number"
    low, high = target_bounds(metadata, multiple)
    try:
        number = float(ground_truth)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not low <= number <= high:  # NaN and infinities fail too
        if (low, high) == (-HARD_LIMIT, HARD_LIMIT):
            rule = f"ground_truth must be a number within ±{HARD_LIMIT:g}"
        else:
            rule = (
                f"ground_truth must be within [{low:g}, {high:g}]: the model's training target "
                f"range widened by {multiple:g} spans on each side"
            )
        return rule, "out_of_range"
    return None


def _not_a_class(classes: Sequence[object]) -> str:
    shown = ", ".join(_short_repr(c) for c in classes[:SHOWN_CLASSES])
    count = f"{len(classes)} class" if len(classes) == 1 else f"{len(classes)} classes"
    if len(classes) <= SHOWN_CLASSES:
        return f"ground_truth must be one of the model's {count}: {shown}"
    return f"ground_truth must be one of the model's {count}, e.g. {shown}"


def _short_repr(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _abs_error(predicted: Any, ground_truth: Any) -> float | None:
    """|prediction - ground truth|, or None when it is not a number within HARD_LIMIT."""
    try:
        error = abs(float(predicted) - float(ground_truth))
    except (TypeError, ValueError, OverflowError):
        return None
    return error if error <= HARD_LIMIT else None  # NaN fails the comparison too


def _detail(field: str, message: str, kind: str) -> dict[str, str]:
    return {"field": field, "message": message, "type": kind}
