"""The error tree: each error knows its HTTP status, a stable code and its metric stage.

Every error the service returns looks like::

    {"error": {"code": "validation_error", "message": "...", "details": [{"field": ..., ...}]}}

The handlers that render that shape, and count each error once under its ``stage``, are HTTP:
app/api/errors.py. Nothing here imports FastAPI or Starlette.
"""

import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any, ClassVar, Literal

from pydantic_core import ErrorDetails

Detail = dict[str, Any]
Stage = Literal[
    "validation", "unscorable", "unknown_model", "unknown_version", "model", "store", "feedback"
]
"""Where a request failed: the ``stage`` label of ``steward_errors_total``."""


class StewardError(Exception):
    """Base of every error the service reports: its HTTP status, a stable code, and the metric
    stage it is counted under where it is rendered (None: not counted as an error).

    ``model`` names the model the error concerns, when known (None: ``_unknown`` in metrics).
    """

    status_code = 500
    code = "internal_error"
    stage: ClassVar[Stage | None] = None
    headers: ClassVar[dict[str, str]] = {}

    def __init__(
        self, message: str, details: Sequence[Detail] = (), *, model: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)
        self.model = model

    def payload(self) -> dict[str, Any]:
        """The error in the service's one JSON shape."""
        return error_payload(self.code, self.message, self.details)


class InvalidJSON(StewardError):
    status_code = 400
    code = "invalid_json"
    stage = "validation"


class PayloadTooLarge(StewardError):
    status_code = 413
    code = "payload_too_large"


class ValidationFailed(StewardError):
    status_code = 422
    code = "validation_error"
    stage: ClassVar[Stage | None] = "validation"  # Stage | None: InvalidGroundTruth has none


class InvalidGroundTruth(ValidationFailed):
    """Feedback this prediction cannot take (not one of its classes, a number out of range, an
    error too large to score): counted as the feedback outcome ``invalid``, not as an error."""

    stage = None


class UnknownModel(StewardError):
    status_code = 404
    code = "unknown_model"
    stage = "unknown_model"


class UnknownVersion(StewardError):
    status_code = 404
    code = "unknown_version"
    stage = "unknown_version"


class UnknownPrediction(StewardError):
    status_code = 404
    code = "unknown_prediction"
    stage = "feedback"


class FeedbackConflict(StewardError):
    status_code = 409
    code = "feedback_conflict"


class UnscorableInput(StewardError):
    """Valid input the model cannot score: it failed, or gave a non-finite or absurd result,
    on these values while it scores typical ones (so the input, not the model, is at fault)."""

    status_code = 422
    code = "unscorable_input"
    stage = "unscorable"


class ModelUnavailable(StewardError):
    """The model exists but its artifact was refused at load."""

    status_code = 503
    code = "model_unavailable"
    stage = "model"


class ModelFailure(StewardError):
    """The model is broken: it fails even on a typical input."""

    status_code = 500
    code = "model_failure"
    stage = "model"


RETRY_AFTER_SECONDS = 1
"""The ``Retry-After`` of a 503 for a store that is down or behind: the prediction log retries
the store at least every 2 s and makes room as soon as it writes, so a client comes back soon."""


class StoreUnavailable(StewardError):
    """The store is down, or the log's buffer for it is full: nothing was acknowledged."""

    status_code = 503
    code = "store_unavailable"
    stage = "store"
    headers: ClassVar[dict[str, str]] = {"Retry-After": str(RETRY_AFTER_SECONDS)}


class StoreSchemaTooNew(StoreUnavailable):
    """The store was migrated by a newer Steward: refused at start-up, never written to."""

    code = "store_schema_too_new"


class ClientClosedRequest(StewardError):
    """The client went away before sending its whole body; nobody reads this answer."""

    status_code = 499  # nginx's code for it: counted apart from the server's own errors
    code = "client_closed_request"


class Overloaded(StewardError):
    """More requests in flight than ``STEWARD_MAX_CONCURRENCY``: refused at once rather than
    queued, so a client retries (on this replica or another) instead of waiting."""

    status_code = 503
    code = "overloaded"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class RequestTimeout(StewardError):
    """The body did not arrive within ``STEWARD_BODY_TIMEOUT_SECONDS``; the connection closes
    (its unread bytes cannot be told apart from a next request)."""

    status_code = 408
    code = "request_timeout"
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}


class NotReady(StewardError):
    status_code = 503
    code = "not_ready"
    headers: ClassVar[dict[str, str]] = {"Retry-After": str(RETRY_AFTER_SECONDS)}


class ArtifactError(StewardError):
    """A registry entry that cannot be read or trusted (CLI and registry)."""

    code = "artifact_error"


class AliasesUnreadable(ArtifactError):
    """A model's aliases.json is not one (written by hand?): nothing overwrites it."""

    status_code = 409
    code = "aliases_unreadable"


class LifecycleConflict(StewardError):
    """A promote or roll-back the registry's state does not allow (nothing to roll back to, a
    version whose metadata cannot be read); nothing was changed."""

    status_code = 409
    code = "lifecycle_conflict"


class RegistryReadOnly(StewardError):
    """A change to a model's aliases (promote, roll back, traffic, automatic-rollback policy) on
    a server that cannot write the registry: mounted read-only, as each replica's is on
    Kubernetes. Nothing was changed; such changes are made where the registry is writable."""

    status_code = 409
    code = "registry_read_only"


class TrainingDataRefused(StewardError):
    """The data a retraining would learn from, refused before anything is fitted: too few
    labelled rows, a version that keeps no data of its own and no --csv, a --csv without the
    version's columns. Nothing is written to the registry."""

    status_code = 409
    code = "training_data_refused"


class NoRecipe(StewardError):
    """A retraining whose production version holds no estimator scikit-learn can clone."""

    status_code = 409
    code = "no_recipe"


class NoSearchGrid(StewardError):
    """A retraining asked to search hyperparameters for an estimator family that has no grid
    (app/search.py): refused before anything is fitted, never silently done without a search."""

    status_code = 409
    code = "no_search_grid"


class GateRefused(StewardError):
    """A retrained version the gate refused, asked to become candidate or production: it is
    kept as a version, never aliased."""

    status_code = 409
    code = "gate_refused"


class RetrainRunning(StewardError):
    """A retrain job asked for a model that has one running: two would race to the next
    version number and judge each other's data."""

    status_code = 409
    code = "retrain_running"


class UnknownJob(StewardError):
    """A job id this server does not hold (never started, forgotten, or another replica's)."""

    status_code = 404
    code = "unknown_job"


class AdminDisabled(StewardError):
    """The admin API was called on a server with no admin token configured."""

    status_code = 403
    code = "admin_disabled"


class Unauthorized(StewardError):
    """An admin request without the right bearer token (missing, malformed or wrong alike)."""

    status_code = 401
    code = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class InvalidSettings(StewardError):
    """A setting the service cannot start with: named, with its rule, never its value."""

    code = "invalid_settings"


def error_payload(code: str, message: str, details: Sequence[Detail] = ()) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": list(details)}}


MAX_MESSAGE_LENGTH = 200
# A key the client sent is named back only if it looks like a field name: never markup, never
# a 100 kB string.
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.() -]{1,64}$")


def field_errors(errors: Iterable[ErrorDetails], skip: Collection[str] = ()) -> list[Detail]:
    """Pydantic errors as details naming the field (``instances.0.petal_width``) and the rule.

    A first location part in ``skip`` (FastAPI's "body", a union's tag) is left out. The value
    sent is never repeated: pydantic's messages name the rule, and a key that was not expected
    is named only when it looks like a field name.
    """
    details = []
    for error in errors:
        loc = list(error["loc"])
        if loc and loc[0] in skip:
            loc = loc[1:]
        if error["type"] == "extra_forbidden" and loc and not _SAFE_KEY.match(str(loc[-1])):
            loc[-1] = "(unexpected key)"
        message = error["msg"]
        if len(message) > MAX_MESSAGE_LENGTH:
            message = message[: MAX_MESSAGE_LENGTH - 3] + "..."
        details.append(
            {
                "field": ".".join(str(part) for part in loc),
                "message": message,
                "type": error["type"],
            }
        )
    return details


def validation_error(errors: Sequence[ErrorDetails], skip: Collection[str] = ()) -> StewardError:
    """Map pydantic errors to InvalidJSON (unparseable body) or ValidationFailed (bad values)."""
    if any(error["type"] == "json_invalid" for error in errors):
        reason = next(e for e in errors if e["type"] == "json_invalid").get("ctx", {}).get("error")
        return InvalidJSON(f"request body is not valid JSON: {reason}")
    details = field_errors(errors, skip)
    fields = ", ".join(d["field"] or "body" for d in details[:5])
    return ValidationFailed(f"invalid request: {fields}", details)
