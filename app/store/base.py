"""What the prediction store holds, and the contract every backend fulfils."""

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from app.errors import StoreUnavailable


class PredictionRecord(NamedTuple):
    """One predicted row as acknowledged to the client, in the pieces the request path has.

    A NamedTuple, not a frozen dataclass: just as immutable, and made once per predicted row
    on the request path, where a frozen dataclass's ``__init__`` costs several times more. Its
    JSON columns, ``inputs`` and ``output``, are built where they are read: by the log's writer
    thread, off the event loop.
    """

    id: str
    model: str
    version: int
    created_at: datetime
    names: tuple[str, ...]  # the version's feature names, one tuple shared by all its rows
    row: tuple[Any, ...]  # the validated values, in the order of ``names``
    prediction: str | int | float  # a class label, or a regressor's value
    probabilities: dict[str, float] | None = None  # by class, when the model gives them
    shadow_of: str | None = None  # a shadow prediction: the id of the served row it shadows

    @property
    def inputs(self) -> dict[str, Any]:
        """The ``inputs`` column: the row by feature name."""
        return dict(zip(self.names, self.row, strict=True))

    @property
    def output(self) -> dict[str, Any]:
        """The ``output`` column: the prediction, and the class probabilities if any."""
        if self.probabilities is None:
            return {"prediction": self.prediction}
        return {"prediction": self.prediction, "probabilities": self.probabilities}


@dataclass(frozen=True, slots=True)
class StoredShadow:
    """A shadow prediction: what another version (the candidate) predicted for a served row,
    never returned to the client, with its ground truth once the served row is labelled. Its
    inputs are the served row's."""

    id: str
    prediction_id: str  # the served row it shadows
    model: str
    version: int
    created_at: datetime
    output: dict[str, Any]
    ground_truth: Any | None
    correct: bool | None
    abs_error: float | None
    feedback_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredPrediction:
    """A logged (served) prediction with its ground truth, once labelled, and its shadow
    predictions."""

    id: str
    model: str
    version: int
    created_at: datetime
    inputs: dict[str, Any]
    output: dict[str, Any]
    ground_truth: Any | None
    correct: bool | None
    abs_error: float | None
    feedback_at: datetime | None
    shadows: tuple[StoredShadow, ...] = ()


@dataclass(frozen=True, slots=True)
class LabelledRow:
    """A served prediction's inputs and the ground truth a client sent for it: one row a
    retraining may learn from (app/retraining_data.py). Never a shadow row: those are another
    version's guess at a served row, not more data."""

    id: str
    version: int  # the version that served it
    created_at: datetime
    inputs: dict[str, Any]  # by feature name, as that version validated them
    ground_truth: Any


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth for one prediction, with its outcome computed by the feedback path.

    ``shadows`` label the served row's shadow predictions with the same ground truth, each
    keyed by the shadow row's id and scored by its own version: stored only with the served
    row's label, in its transaction.
    """

    prediction_id: str
    ground_truth: Any
    correct: bool | None
    abs_error: float | None
    at: datetime
    shadows: tuple["Label", ...] = ()


@dataclass(frozen=True, slots=True)
class VersionCounts:
    """One version's predictions in a window and what their ground truth says: the sums that
    accuracy (classifiers), MAE and RMSE (regressors) are made of (app/quality.py)."""

    version: int
    predictions: int
    labelled: int
    correct: int  # labelled predictions that were right (classifiers; 0 for regressors)
    abs_error_sum: float  # sum of |prediction - ground truth| (regressors; 0 for classifiers)
    squared_error_sum: float
    shadow: bool = False  # the version's shadow predictions, not the rows it served


@dataclass(frozen=True, slots=True)
class PairedCounts:
    """Champion (the served rows) against challenger (their shadow predictions) on the same
    labels: only shadow rows whose served row is labelled too, scored against that one ground
    truth (app/quality.py turns these sums into accuracy, MAE and RMSE side by side)."""

    champion: int  # the version that served the rows
    challenger: int  # the version that shadowed them
    labelled: int
    champion_correct: int
    challenger_correct: int
    champion_abs_error_sum: float
    challenger_abs_error_sum: float
    champion_squared_error_sum: float
    challenger_squared_error_sum: float


class RowsRefused(StoreUnavailable):
    """The store refused the rows themselves (a constraint, a value it cannot encode or hold),
    not for want of a connection, a lock or disk space: a plain StoreUnavailable says that."""


@dataclass(frozen=True, slots=True)
class QuarantinedPrediction:
    """A prediction the store refused, kept for an operator: its identity, why, and a safe
    text rendering of the row (never the row itself, which is what could not be stored)."""

    id: str
    model: str
    version: int
    created_at: datetime
    reason: str
    row_repr: str
    at: datetime


class PredictionStore(Protocol):
    """Durable prediction log. Every method raises StoreUnavailable when the backend fails."""

    def write_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Insert rows in one transaction, shadow predictions (``shadow_of`` set) into
        ``shadow_predictions``; RowsRefused when the store refuses their content."""

    def get_predictions(self, ids: Collection[str]) -> dict[str, StoredPrediction]:
        """The stored served predictions among ``ids``, by id, each with its shadow
        predictions. A shadow prediction's id is not a prediction: absent."""
        ...

    def label(self, labels: Sequence[Label]) -> set[str]:
        """Record ground truth on still-unlabelled predictions, in one transaction; a label's
        ``shadows`` only when its served row's label lands, each on its still-unlabelled
        shadow row of that served row.

        Returns the ids labelled by this call, shadow rows' included; an id already labelled
        (or unknown) is left as it was, so concurrent feedback for one id labels it (and its
        shadows) exactly once.
        """
        ...

    def version_counts(
        self, model: str, since: datetime | None, until: datetime | None = None
    ) -> list[VersionCounts]:
        """Per version of ``model`` (by version number, its served rows before its shadow
        rows, never mixed), its predictions made at or after ``since`` and before ``until``
        (unbounded when None) and the labels they have; a version without a prediction in the
        window is absent."""
        ...

    def paired_counts(self, model: str, since: datetime | None) -> list[PairedCounts]:
        """Per (champion, challenger) pair of ``model``: shadow rows made at or after
        ``since`` that are labelled, with their served rows, on the same ground truth."""
        ...

    def labelled_rows(
        self, model: str, since: datetime | None, until: datetime | None
    ) -> list[LabelledRow]:
        """The labelled served predictions of ``model`` (any version) made at or after
        ``since`` and before ``until`` (unbounded when None), oldest first (ties by id)."""
        ...

    def quarantine(self, row: QuarantinedPrediction) -> None:
        """Keep a prediction the store refused (``prediction_quarantine``), in its own
        transaction."""

    def check_writable(self) -> None:
        """Prove a write transaction that inserts a prediction commits now."""

    def close(self) -> None: ...
