"""The shadow-prediction collectors: what a candidate shadowed, failed to, and how it scored.

Built by ``Metrics`` on its registry and reached as ``metrics.shadow``; app/shadow.py counts the
rows shadowed or not, app/shadow_feedback.py the labelled pairs. Every loaded version gets its
series at 0, since any of them may shadow, or be shadowed.
"""

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter

from app.artifacts import ModelMetadata

ShadowFailure = Literal["skipped", "log_full", "invalid_input", "model_failure", "late"]
"""Why a candidate's shadow predictions of a request were not logged, or (late) not labelled
(app/shadow.py)."""
SHADOW_FAILURES: tuple[ShadowFailure, ...] = get_args(ShadowFailure)
PairRole = Literal["champion", "challenger"]
ShadowOutcome = Literal["correct", "incorrect", "labelled", "invalid"]
SHADOW_OUTCOMES: dict[tuple[str, PairRole], tuple[ShadowOutcome, ...]] = {
    ("classification", "challenger"): ("correct", "incorrect"),
    ("classification", "champion"): ("correct", "incorrect"),
    ("regression", "challenger"): ("labelled", "invalid"),
    ("regression", "champion"): ("labelled",),
}
"""The outcomes of a labelled row that a challenger shadowed, by task and role: the challenger's
own prediction, right or wrong (a regressor's labelled, or invalid when its error is beyond what
the feedback path scores), and the champion's prediction of the same row, counted only beside a
challenger's scored one, so that both are counted on exactly the same labels."""


class ShadowMetrics:
    """The shadow collectors and the events that update them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.feedback = Counter(
            "steward_shadow_feedback",
            "Labelled rows a challenger shadowed, by model, version, role (challenger: its "
            "shadow prediction; champion: the served prediction of the same row) and outcome.",
            ["model", "version", "role", "outcome"],
            registry=registry,
        )
        self.absolute_error = Counter(
            "steward_shadow_feedback_absolute_error",
            "Sum of absolute errors of those rows, regressors, by role (for MAE).",
            ["model", "version", "role"],
            registry=registry,
        )
        self.squared_error = Counter(
            "steward_shadow_feedback_squared_error",
            "Sum of squared errors of those rows, regressors, by role (for RMSE).",
            ["model", "version", "role"],
            registry=registry,
        )
        self.predictions = Counter(
            "steward_shadow_predictions",
            "Rows a candidate predicted in shadow (logged, never returned), by version.",
            ["model", "version"],
            registry=registry,
        )
        self.failures = Counter(
            "steward_shadow_failures",
            "Rows a candidate did not shadow, by reason ("
            + ", ".join(SHADOW_FAILURES)
            + "); the client's answer never depends on them.",
            ["model", "version", "reason"],
            registry=registry,
        )

    def loaded(self, metadata: ModelMetadata) -> None:
        """A version is loaded: create its series at 0."""
        name, version = metadata.name, str(metadata.version)
        self.predictions.labels(name, version)
        for reason in SHADOW_FAILURES:
            self.failures.labels(name, version, reason)
        for role in get_args(PairRole):  # any loaded version may shadow, or be shadowed
            for outcome in SHADOW_OUTCOMES[(metadata.task, role)]:
                self.feedback.labels(name, version, role, outcome)
            if metadata.task == "regression":
                self.absolute_error.labels(name, version, role)
                self.squared_error.labels(name, version, role)

    def count(self, metadata: ModelMetadata, rows: int) -> None:
        """Rows the candidate predicted in shadow and queued in the log."""
        self.predictions.labels(metadata.name, str(metadata.version)).inc(rows)

    def count_failure(self, metadata: ModelMetadata, reason: ShadowFailure, rows: int) -> None:
        self.failures.labels(metadata.name, str(metadata.version), reason).inc(rows)

    def observe_feedback(
        self,
        metadata: ModelMetadata,
        role: PairRole,
        outcome: ShadowOutcome,
        abs_error: float | None = None,
    ) -> None:
        """Count one labelled row of a shadow pair, for one side of it; a regressor's brings its
        ``abs_error`` (at most 1e100, see app/ground_truth.py: its square is finite)."""
        name, version = metadata.name, str(metadata.version)
        self.feedback.labels(name, version, role, outcome).inc()
        if abs_error is not None:
            self.absolute_error.labels(name, version, role).inc(abs_error)
            self.squared_error.labels(name, version, role).inc(abs_error * abs_error)
