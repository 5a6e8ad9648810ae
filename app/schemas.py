"""API request and response models (each model version's own request model: app/features.py)."""

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import jiter
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from app.aliases import AliasChange, TrafficMode, TrafficPolicy
from app.artifacts import ModelMetadata
from app.errors import InvalidJSON, validation_error

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# Label order matters: str first, so "1" stays a string; StrictInt refuses booleans.
Label = StrictStr | StrictInt | FiniteFloat

_HEX = "[0-9a-fA-F]"
PREDICTION_ID_PATTERN = (
    f"^(?:{_HEX}{{32}}|{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}})$"
)
_PREDICTION_ID = re.compile(PREDICTION_ID_PATTERN)


def canonical_prediction_id(value: str) -> str:
    """The stored form of a prediction id (32 lower-case hex digits) from either UUID form.

    Raises a validation error that names the rule, never the value.
    """
    if len(value) > 36 or _PREDICTION_ID.fullmatch(value) is None:
        raise PydanticCustomError(
            "prediction_id_format",
            "Input should be a prediction id: 32 hex digits, or the dashed UUID form "
            "(8-4-4-4-12), in either case",
        )
    return value.replace("-", "").lower()


PredictionId = Annotated[
    StrictStr,
    AfterValidator(canonical_prediction_id),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": PREDICTION_ID_PATTERN,
            "minLength": 32,
            "maxLength": 36,
            "description": "A prediction's `id`: 32 hex digits, or the same UUID with dashes "
            "(8-4-4-4-12); either case.",
        }
    ),
]


class Prediction(BaseModel):
    """One predicted row. ``id`` is what /feedback takes."""

    id: str
    prediction: Label
    probabilities: dict[str, float] | None = None


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]


def _ground_truth(value: object) -> object:
    """A class label (a string or an integer) or a finite number; one error for anything else
    (a union of the three would report three)."""
    if isinstance(value, str) or type(value) is int:
        return value
    if type(value) is float and math.isfinite(value):
        return value
    raise PydanticCustomError("ground_truth_type", "Input should be a string or a finite number")


GroundTruth = Annotated[
    str | int | float,
    PlainValidator(_ground_truth),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}]}),
]


class FeedbackItem(BaseModel):
    """Ground truth for one logged prediction."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: PredictionId
    ground_truth: GroundTruth


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackItem] = Field(min_length=1)


def _feedback_form(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "items" in value else "single"


T = TypeVar("T")

FEEDBACK_FORMS = ("single", "batch")
FeedbackRequest = Annotated[
    Annotated[FeedbackItem, Tag("single")] | Annotated[FeedbackBatch, Tag("batch")],
    Discriminator(_feedback_form),
]
FEEDBACK_REQUEST: TypeAdapter[FeedbackItem | FeedbackBatch] = TypeAdapter(FeedbackRequest)


def parse_json(
    validate_json: Callable[[bytes], T],
    body: bytes,
    skip: tuple[str, ...] = (),
    keys: Callable[[T], int] | None = None,
) -> T:
    """Validate a raw JSON body, whatever its Content-Type; errors in the one error shape.

    An empty or unparseable body is InvalidJSON (400), and so is an object with a key twice:
    parsers disagree on which one wins (a proxy may check the first, we would use the last).
    Values that do not fit are ValidationFailed (422), naming each field.

    ``keys`` counts the keys of a validated value, when that is known; a body with exactly as
    many colons holds no key twice (every key is followed by one, a colon in a string only adds
    to the count), which spares the second parse on the hot path.
    """
    if not body.strip():
        raise InvalidJSON("request body is empty; expected a JSON object")
    if keys is None:
        refuse_duplicate_keys(body)
    try:
        value = validate_json(body)
    except ValidationError as exc:
        if keys is not None:  # a key twice is the fault, not the copy that won and failed
            refuse_duplicate_keys(body)
        raise validation_error(exc.errors(include_url=False), skip) from exc
    if keys is not None and body.count(b":") != keys(value):
        refuse_duplicate_keys(body)
    return value


def refuse_duplicate_keys(body: bytes) -> None:
    """InvalidJSON if an object in ``body`` has a key twice (jiter: the parser pydantic uses,
    asked to catch what pydantic's own call lets through). Costs a full parse."""
    try:
        jiter.from_json(body, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {_without_key(str(exc))}") from exc


def _without_key(message: str) -> str:
    """jiter names a duplicate key; the key is the client's, so only its place is kept."""
    if not message.startswith("Detected duplicate key"):
        return message  # jiter's other messages name the rule and the place only
    place = re.search(r"at line \d+ column \d+$", message)
    return "a key appears twice in one object" + (f" {place.group()}" if place else "")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    error: ErrorBody


FeedbackStatus = Literal["accepted", "duplicate"]


class FeedbackResult(BaseModel):
    """Accepted: labelled now. Duplicate: the same ground truth was already recorded."""

    prediction_id: str
    status: FeedbackStatus
    model: str
    version: int


class FeedbackItemResult(BaseModel):
    prediction_id: str
    status: FeedbackStatus | Literal["error"]
    model: str | None = None
    version: int | None = None
    error: ErrorBody | None = None


class FeedbackBatchResponse(BaseModel):
    accepted: int
    duplicate: int
    failed: int
    results: list[FeedbackItemResult]


class ModelSummary(BaseModel):
    name: str
    task: str | None = None
    versions: list[int]
    aliases: dict[str, int]
    serving: int | None = Field(None, description="The production version, when loaded.")
    refused: str | None = Field(None, description="Why the production version was refused.")
    traffic: TrafficMode = Field(
        "none", description="The traffic policy's mode (GET /models/{model} says more)."
    )


class RuntimeFallback(BaseModel):
    """Why a loaded version serves on scikit-learn rather than a compiled twin."""

    reason: str = Field(
        description="twins_off, not_compiled, unsupported, proof_failed, no_proof_rows, "
        "checksum_mismatch, twin_unreadable or twin_differs (docs/api.md)."
    )
    message: str


class LoadedVersion(BaseModel):
    version: int
    aliases: list[str]
    sklearn_mismatch: str | None = None
    runtime: str = Field(
        "sklearn",
        description="What answers its requests: onnxruntime or treelite (its compiled twin, "
        "proven equal to it), or sklearn.",
    )
    fallback: RuntimeFallback | None = Field(
        None, description="Why it serves on scikit-learn; None when its twin serves."
    )


class TrafficStatus(TrafficPolicy):
    """The traffic policy as this server applies it: the policy of the aliases file, and
    whether it applies now."""

    active: bool = Field(
        description="True while the candidate takes its share: a shadow or canary mode, the "
        "candidate loaded and not the production version."
    )
    inactive_reason: str | None = Field(
        description="Why a shadow or canary policy does not apply now (production answers "
        "everything): the candidate alias has left the version the policy was set for, the "
        "candidate is the production version, is refused, is not on disk, is not loaded yet, "
        "or (canary) reads other inputs than production. Null when it applies, or when the "
        "mode is none."
    )


class ModelDetail(BaseModel):
    name: str
    aliases: dict[str, int]
    loaded: list[LoadedVersion]
    refusals: list[dict[str, Any]]
    versions: list[ModelMetadata]
    traffic: TrafficStatus


class VersionQuality(BaseModel):
    """One version's live quality over the window, from the prediction log and its feedback:
    the rows it served, or (``role`` shadow) the rows it predicted in shadow of another."""

    version: int
    role: Literal["served", "shadow"] = Field(
        description="served: its predictions answered clients; shadow: its predictions of "
        "served rows, never returned (a version that did both appears twice)."
    )
    predictions: int = Field(description="Predictions this version made in the window.")
    labelled: int = Field(description="Those with ground truth.")
    accuracy: float | None = Field(
        description="Classifiers: correct / labelled; null when nothing is labelled."
    )
    mae: float | None = Field(
        description="Regressors: mean |prediction - ground truth|; null when nothing is labelled."
    )
    rmse: float | None = Field(
        description="Regressors: root mean squared error; null when nothing is labelled."
    )


class PairedQuality(BaseModel):
    """Champion against challenger on the same labels: the rows one version served and the
    other shadowed, both labelled, scored against that one ground truth."""

    champion: int = Field(description="The version that served the rows.")
    challenger: int = Field(description="The version that predicted them in shadow.")
    labelled: int = Field(description="Rows labelled for both in the window.")
    champion_accuracy: float | None = Field(
        description="Classifiers: the champion's correct / labelled; null when not a "
        "classifier or nothing is labelled."
    )
    challenger_accuracy: float | None = Field(description="The same for the challenger.")
    champion_mae: float | None = Field(
        description="Regressors: the champion's mean |prediction - ground truth|; null when "
        "not a regressor or nothing is labelled."
    )
    challenger_mae: float | None = Field(description="The same for the challenger.")
    champion_rmse: float | None = Field(
        description="Regressors: the champion's root mean squared error; null likewise."
    )
    challenger_rmse: float | None = Field(description="The same for the challenger.")


AutoRollbackState = Literal[
    "off", "idle", "waiting", "no_baseline", "within_margin", "worse", "unknown"
]


class AutoRollbackStatus(BaseModel):
    """A model's automatic rollback (app/auto_rollback.py): the policy that applies and where
    it comes from, and what the live figures say of production's latest promote now."""

    enabled: bool
    min_labels: int = Field(description="Labels of the promoted version before it is judged.")
    margin: float = Field(description="Absolute for accuracy, relative for MAE.")
    source: Literal["settings", "model"] = Field(
        description="settings: STEWARD_AUTO_ROLLBACK*; model: the model's own policy in its "
        "aliases.json (set_by, set_at)."
    )
    set_by: str | None = None
    set_at: datetime | None = None
    state: AutoRollbackState = Field(
        description="off: the policy is off; idle: nothing to judge (production's latest change "
        "is not a promote from an earlier version); waiting: fewer labels than min_labels; "
        "no_baseline: the version before has no labelled live figure, so no automatic "
        "rollback; within_margin: judged, not worse by more than the margin; worse: judged "
        "worse, rolled back (or being rolled back); unknown: the aliases file or the promoted "
        "version's metadata cannot be read (``reason`` says which)."
    )
    reason: str = Field(description="The state in one line, with the figures.")
    promote: AliasChange | None = Field(
        None, description="The promote judged: production's latest change."
    )
    metric: Literal["accuracy", "mae"] | None = None
    labelled: int | None = Field(
        None, description="The promoted version's labelled served predictions since it."
    )
    figure: float | None = Field(None, description="Its accuracy (or MAE) on them.")
    previous_labelled: int | None = Field(
        None,
        description="The version before's labelled served predictions while it was "
        "production, within the quality window before the promote.",
    )
    previous_figure: float | None = Field(None, description="Its accuracy (or MAE) on them.")


class ModelReport(ModelDetail):
    """GET /models/{model}: what the registry knows, and the live quality of each version."""

    quality: list[VersionQuality] = Field(
        description="Every version on disk or in the log, by version number; champion "
        "(production) and challenger (candidate) are named by ``aliases``."
    )
    paired: list[PairedQuality] = Field(
        description="Per pair of versions, champion (served) vs challenger (shadow) on the "
        "same labels, by champion then challenger version."
    )
    quality_window_seconds: float = Field(
        description="The span before now whose predictions ``quality`` and ``paired`` cover."
    )
    auto_rollback: AutoRollbackStatus = Field(
        description="The automatic rollback's policy for this model, and its view of the "
        "latest promote."
    )
