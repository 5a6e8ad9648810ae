"""The shadow predictions of a labelled row: judged against its ground truth, then counted.

A served row's shadow predictions (another version's, never returned) are judged against the
same ground truth, each by its own version, and labelled in the served row's transaction, only
when the served row's label lands: both versions are scored on the same labels. What the client
is answered is the served row's alone; a shadow whose regressor error cannot be scored is left
unlabelled and counted as invalid for its version. ``FeedbackRecorder`` (app/feedback.py) asks
for the labels while it judges a row, and has them counted once its label has landed.
"""

import logging
from datetime import datetime
from typing import Any

from app.artifacts import ModelMetadata
from app.errors import ArtifactError
from app.ground_truth import abs_error
from app.loading import LoadedModel
from app.registry import Registry
from app.shadow_metrics import ShadowMetrics, ShadowOutcome
from app.store import Label, StoredPrediction, StoredShadow

logger = logging.getLogger(__name__)


class ShadowScorer:
    """Labels and counts the shadow predictions of the served rows feedback labels."""

    def __init__(self, registry: Registry, metrics: ShadowMetrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self._gone: set[tuple[str, int]] = set()  # shadowing versions found removed

    def labels(
        self, prediction: StoredPrediction, ground_truth: Any, at: datetime
    ) -> tuple[Label, ...]:
        """The labels of ``prediction``'s shadows that can be scored against ``ground_truth``,
        to go into the served row's label (and so its transaction)."""
        return tuple(
            label
            for shadow in prediction.shadows
            if (label := self._judge(prediction, shadow, ground_truth, at))
        )

    def count(
        self,
        prediction: StoredPrediction,
        label: Label,
        labelled: set[str],
        candidate: LoadedModel | None,
    ) -> None:
        """The served row's ``label`` landed: count its shadows' outcomes (their ids are taken
        from ``labelled``), and ``late`` if ``candidate`` still shadowed it without its shadow
        in the same transaction."""
        self._count_pairs(prediction, label, labelled)
        self._count_late(prediction, candidate)

    def _judge(
        self, prediction: StoredPrediction, shadow: StoredShadow, ground_truth: Any, at: datetime
    ) -> Label | None:
        """The label of one shadow of ``prediction``, scored by its own version; None when it
        is labelled already, its version is gone from the registry, or (a regressor's) its
        error cannot be scored. The served row is labelled whatever becomes of its shadows."""
        metadata = self._metadata(prediction.model, shadow.version)
        if shadow.ground_truth is not None or metadata is None:
            return None
        predicted = shadow.output["prediction"]
        if metadata.task == "classification":
            return Label(shadow.id, ground_truth, predicted == ground_truth, None, at)
        error = abs_error(predicted, ground_truth)
        if error is None:
            return None
        return Label(shadow.id, ground_truth, None, error, at)

    def _metadata(self, model: str, version: int) -> ModelMetadata | None:
        """A shadowing version's metadata; None (logged once) when its folder was removed, as
        a discarded candidate's may be."""
        try:
            return self.registry.metadata(model, version)
        except ArtifactError as exc:
            if (model, version) not in self._gone:
                self._gone.add((model, version))
                logger.warning("%s v%d shadowed rows but is gone: %s", model, version, exc)
            return None

    def _count_late(self, prediction: StoredPrediction, candidate: LoadedModel | None) -> None:
        """The row was labelled while ``candidate`` still shadowed it: if its shadow did not
        make it into the same transaction, it never will be labelled (``late``)."""
        if candidate is not None and all(
            s.version != candidate.version for s in prediction.shadows
        ):
            self.metrics.count_failure(candidate.metadata, "late", 1)

    def _count_pairs(self, prediction: StoredPrediction, label: Label, labelled: set[str]) -> None:
        """Count each shadow labelled with the served row (their ids are taken from
        ``labelled``), and beside each the champion's outcome on the same row, so that
        Prometheus compares the two on exactly the same labels. A shadow left unlabelled
        because its error cannot be scored is ``invalid``; the champion is not counted for it."""
        champion = self.registry.metadata(prediction.model, prediction.version)
        scored = {s.prediction_id: s for s in label.shadows}
        for shadow in prediction.shadows:
            metadata = self._metadata(prediction.model, shadow.version)
            if metadata is None:
                continue
            shadow_label = scored.get(shadow.id)
            if shadow_label is None:
                if shadow.ground_truth is None:
                    self.metrics.observe_feedback(metadata, "challenger", "invalid")
            elif shadow.id in labelled:
                labelled.discard(shadow.id)
                self.metrics.observe_feedback(
                    metadata, "challenger", *_pair_outcome(metadata, shadow_label)
                )
                self.metrics.observe_feedback(champion, "champion", *_pair_outcome(champion, label))


def _pair_outcome(metadata: ModelMetadata, label: Label) -> tuple[ShadowOutcome, float | None]:
    """One side of a shadow pair, as the shadow counters take it."""
    if metadata.task == "classification":
        return ("correct" if label.correct else "incorrect"), None
    return "labelled", label.abs_error
