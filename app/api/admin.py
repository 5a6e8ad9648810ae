"""The admin API: promote, roll back, set the traffic policy and the automatic-rollback policy,
rescan, start a retrain job and follow it (app/jobs.py: each in its own process), behind a
bearer token.

Each route calls the same function the CLI does (app/lifecycle.py), then rescans the registry
(app/watcher.py) so that its answer shows what this server serves now: a new version that fails
its checks or its warm-up is refused there, and the old one keeps serving.

With no token configured every admin route answers 403; a missing, malformed or wrong token is
401, compared in constant time. Every call is logged (never the token) and counted in
``steward_admin_actions_total`` by its route class, which sees every outcome: the token's
refusals, the body's validation errors and the core's errors alike.
"""

import hmac
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from app import lifecycle
from app.aliases import MAX_MIN_LABELS, AliasChange, TrafficMode
from app.api.deps import services
from app.artifacts import list_models
from app.auto_rollback import assess
from app.errors import (
    AdminDisabled,
    StewardError,
    Unauthorized,
    UnknownModel,
    validation_error,
)
from app.jobs import JobView
from app.lifecycle import AliasState
from app.metrics import ADMIN_ACTIONS, AdminAction, AdminOutcome
from app.registry import Registry
from app.retraining import Then
from app.retraining_data import feedback_since
from app.schemas import (
    AutoRollbackStatus,
    ErrorResponse,
    ModelSummary,
    TrafficStatus,
    refuse_duplicate_keys,
)
from app.services import Services
from app.watcher import ReloadReport

logger = logging.getLogger(__name__)

ACTOR = "admin-api"  # the ``by`` of the alias changes made here
HISTORY_TAIL = 10  # alias history entries in an answer
MAX_VERSION = 1_000_000_000


class AdminRoute(APIRoute):
    """Logs and counts every call of an admin route, whatever its outcome."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.name not in ADMIN_ACTIONS:  # the counter's labels stay the documented ones
            raise ValueError(f"admin route {self.name!r} is not one of {ADMIN_ACTIONS}")
        action: AdminAction = self.name

        async def audited(request: Request) -> Response:
            try:
                response = await handle(request)
            except Exception as exc:
                denied = isinstance(exc, Unauthorized | AdminDisabled)
                code = _code(exc)
                _audit(request, action, "denied" if denied else "error", code)
                raise
            _audit(request, action, "ok" if response.status_code < 400 else "error", "ok")
            return response

        return audited


def _code(exc: Exception) -> str:
    """An error's code as its answer names it (the one error shape), for the audit line."""
    if isinstance(exc, StewardError):
        return exc.code
    if isinstance(exc, RequestValidationError):  # rendered by app/api/errors.py
        return validation_error(exc.errors(), skip=("body",)).code
    if isinstance(exc, HTTPException) and exc.status_code == 400:
        return "invalid_json"
    return type(exc).__name__


def _audit(request: Request, action: AdminAction, outcome: AdminOutcome, code: str) -> None:
    services(request).metrics.count_admin(action, outcome)
    model = request.path_params.get("model")
    client = request.client.host if request.client else "-"
    level = logging.INFO if outcome == "ok" else logging.WARNING
    logger.log(
        level,
        "admin %s model=%.70r outcome=%s (%s) client=%s",
        action,
        model,
        outcome,
        code,
        client,
    )


_bearer = HTTPBearer(
    auto_error=False,
    description="The admin token (STEWARD_ADMIN_TOKEN or STEWARD_ADMIN_TOKEN_FILE).",
)


async def _authorized(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Services:
    """The services, once the request carries the admin token; AdminDisabled or Unauthorized."""
    built = services(request)
    secret = built.settings.admin_secret
    if secret is None:
        raise AdminDisabled(
            "the admin API is disabled: set STEWARD_ADMIN_TOKEN (or STEWARD_ADMIN_TOKEN_FILE, "
            "a file holding the token) and restart the server"
        )
    expected = secret.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials else b""
    if not (credentials and hmac.compare_digest(given, expected)):
        raise Unauthorized("missing or wrong admin token: send 'Authorization: Bearer <token>'")
    return built


AdminServices = Annotated[Services, Depends(_authorized)]


async def _one_key_each(request: Request) -> None:
    """A body with a key twice is 400, as on /predict and /feedback: which copy wins is the
    parser's choice, and a proxy that checked the other would be fooled."""
    body = await request.body()  # read once already, for the body parameter
    if body.strip():
        refuse_duplicate_keys(body)


_SINGLE_KEYS = [Depends(_one_key_each)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse}
    for status in (400, 401, 403, 404, 409, 413, 422, 503)  # 400, 413: refused before auth
}
router = APIRouter(prefix="/admin", tags=["admin"], route_class=AdminRoute, responses=_ERRORS)


class PromoteRequest(BaseModel):
    """The version to point an alias at."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: StrictInt = Field(ge=1, le=MAX_VERSION, description="A version on disk.")
    alias: Literal["production", "candidate"] = "production"


class TrafficRequest(BaseModel):
    """A model's traffic policy between its production and candidate versions."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: TrafficMode = Field(
        description="none: production answers everything; shadow: the candidate also predicts, "
        "never answers; canary: the candidate answers `percent` of the requests."
    )
    percent: Annotated[
        float | None,  # None: omitted (a null sent is refused below)
        WithJsonSchema({"type": "number", "minimum": 0, "maximum": 100}),
    ] = Field(
        None,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="The share of requests (0-100) the mode applies to. Omitted: 100 for "
        "shadow, 0 for none; required for canary.",
    )

    @field_validator("percent", mode="before")
    @classmethod
    def _given(cls, value: object) -> object:
        """Omitted is a default; null is not: a client sending it means something else."""
        if value is None:
            raise PydanticCustomError("percent_null", "Input should be a number, or omitted")
        return value


class ModelChange(BaseModel):
    """A model after an admin change: its aliases on disk, the change made (None: no alias
    moved), the latest history entries, and what this server serves now (``serving.refused``
    says why a new version was refused, the old one serving on; ``traffic`` whether the
    traffic policy applies)."""

    model: str
    aliases: dict[str, int]
    change: AliasChange | None
    history: list[AliasChange] = Field(description=f"The last {HISTORY_TAIL}, oldest first.")
    serving: ModelSummary
    traffic: TrafficStatus


async def _apply(built: Services, state: AliasState) -> ModelChange:
    await built.watcher.reload()
    entry = built.registry.entry(state.model)
    return ModelChange(
        model=state.model,
        aliases=state.aliases,
        change=state.change,
        history=state.history[-HISTORY_TAIL:],
        serving=entry.summary(),
        traffic=entry.traffic_status(),
    )


@router.post("/models/{model}/promote", name="promote", dependencies=_SINGLE_KEYS)
async def promote(model: str, body: PromoteRequest, built: AdminServices) -> ModelChange:
    """Point an alias (production by default) of a model at a version, and swap it in.

    The version is loaded and warmed up first: one this server refuses (503
    ``model_unavailable``, with the reason) is not written to aliases.json, so no replica or
    restart picks it up. A model new on disk is checked by the rescan instead."""
    root = built.registry.root
    await anyio.to_thread.run_sync(_load_first, built.registry, model, body.version)
    state = await _change(
        root, model, lambda: lifecycle.promote(root, model, body.version, body.alias, by=ACTOR)
    )
    return await _apply(built, state)


async def _change(root: Path, model: str, change: Callable[[], AliasState]) -> AliasState:
    """Run a lifecycle change in a worker thread, for a model on disk: the path's name is a
    client's, so an unknown one is refused without repeating it (or the registry's folder),
    where the CLI's message names both."""

    def run() -> AliasState:
        _known(root, model)
        return change()

    return await anyio.to_thread.run_sync(run)


def _known(root: Path, model: str) -> None:
    """UnknownModel, without the client's name, for a model not on disk. Blocking."""
    if model not in list_models(root):
        raise UnknownModel(
            "no such model",
            [{"field": "model", "message": "not a model of this server (GET /models)"}],
        )


def _load_first(registry: Registry, model: str, version: int) -> None:
    """Load (checks, warm-up) a version this server knows before an alias names it; a model or
    version it does not know yet is left to lifecycle's errors and the rescan. Blocking."""
    if model not in registry.names:
        return
    registry.refresh_versions(model)
    if version in registry.entry(model).state.versions:
        registry.resolve(model, str(version))


@router.post("/models/{model}/rollback", name="rollback")
async def rollback(model: str, built: AdminServices) -> ModelChange:
    """Point production back at the version before its latest promote, and swap it in."""
    root = built.registry.root
    state = await _change(root, model, lambda: lifecycle.rollback(root, model, by=ACTOR))
    built.metrics.count_rollback(model, "manual")  # a model on disk: a bounded label
    return await _apply(built, state)


@router.put("/models/{model}/traffic", name="traffic", dependencies=_SINGLE_KEYS)
async def traffic(model: str, body: TrafficRequest, built: AdminServices) -> ModelChange:
    """Set a model's traffic policy (none, shadow or canary to its candidate), and apply it.

    Shadow and canary need a candidate version other than production (409 otherwise). The
    answer's ``traffic`` says whether the policy applies now: a candidate this server refuses
    leaves production answering everything."""
    root = built.registry.root
    state = await _change(
        root, model, lambda: lifecycle.set_traffic(root, model, body.mode, body.percent, by=ACTOR)
    )
    return await _apply(built, state)


class AutoRollbackRequest(BaseModel):
    """A model's own automatic-rollback policy, in place of the STEWARD_AUTO_ROLLBACK* settings."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(description="Roll a worse promote back by itself, or not.")
    min_labels: StrictInt | None = Field(
        None,
        ge=1,
        le=MAX_MIN_LABELS,
        description="Labels of the promoted version before it is judged; omitted or null: "
        "STEWARD_AUTO_ROLLBACK_MIN_LABELS.",
    )
    margin: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="How much worse it may score: absolute for accuracy, relative for MAE; "
        "omitted or null: STEWARD_AUTO_ROLLBACK_MARGIN.",
    )


@router.put("/models/{model}/auto-rollback", name="auto_rollback", dependencies=_SINGLE_KEYS)
async def auto_rollback(
    model: str, body: AutoRollbackRequest, built: AdminServices
) -> AutoRollbackStatus:
    """Set a model's automatic-rollback policy, kept in its aliases.json for every replica.

    The answer is the policy that now applies and its view of the latest promote, as
    GET /models/{model} shows it."""
    root = built.registry.root
    settings = built.settings

    def run() -> AutoRollbackStatus:
        _known(root, model)
        lifecycle.set_auto_rollback(
            root, model, body.enabled, body.min_labels, body.margin, by=ACTOR
        )
        return assess(settings, built.store, model)

    return await anyio.to_thread.run_sync(run)


@router.post("/reload", name="reload")
async def reload(built: AdminServices) -> ReloadReport:
    """Rescan the registry directory now and swap in what changed."""
    return await built.watcher.reload()


class RetrainRequest(BaseModel):
    """A retrain job: what to do with a version that passes the gate, and the feedback to use."""

    model_config = ConfigDict(extra="forbid", strict=True)

    then: Then = Field(
        "candidate",
        description="keep: a version only; candidate or promote: that alias, if it passed.",
    )
    since: datetime | None = Field(
        None,
        strict=False,  # an ISO 8601 string in JSON
        description="Learn from feedback on predictions made at or after this time (ISO 8601; "
        "UTC if no zone). null: all of it.",
    )
    search: bool = Field(
        False,
        description="Search the recipe's hyperparameters first (`steward retrain --search`): "
        "cross-validated over a small grid for its estimator family, within about "
        "STEWARD_SEARCH_SECONDS; a family with no grid fails the job, `no_search_grid`.",
    )

    @field_validator("since", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        """Only an ISO 8601 string (or null): a number would be read as seconds since 1970."""
        if value is not None and not isinstance(value, str):
            raise PydanticCustomError("since_text", "Input should be an ISO 8601 date or time")
        return value

    @field_validator("since")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """As the CLI's --since: in UTC (a time without a zone is UTC), not in the future."""
        return feedback_since(value) if value is not None else None


class JobStarted(BaseModel):
    """A retrain job just started: follow it at ``links.self``."""

    job: str
    status: str
    links: dict[str, str]


@router.post("/models/{model}/retrain", name="retrain", status_code=202, dependencies=_SINGLE_KEYS)
async def retrain(
    model: str, built: AdminServices, body: Annotated[RetrainRequest | None, Body()] = None
) -> JobStarted:
    """Start retraining a model in a process of its own; answers at once with the job's id.
    No body: every field's default.

    409 ``retrain_running`` (naming the running job) while one runs for the model. The job
    (GET /admin/jobs/{id}) reports progress, then the gate's decision or the error."""
    body = body or RetrainRequest()
    await anyio.to_thread.run_sync(_known, built.registry.root, model)
    job = await built.jobs.start(model, body.since, body.then, body.search)
    return JobStarted(job=job.id, status=job.status, links={"self": f"/admin/jobs/{job.id}"})


@router.get("/jobs/{job_id}", name="job")
async def job(job_id: str, built: AdminServices) -> JobView:
    """A retrain job: its status, latest progress line, and outcome (the gate's table, or the
    error's code and one line). Jobs live in this server's memory, the last 100 finished."""
    return built.jobs.get(job_id).view()
