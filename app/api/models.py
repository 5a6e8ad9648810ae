"""GET /models, GET /models/{model} and GET /models/{model}/drift: versions, aliases,
metadata, live quality, automatic rollback, input drift."""

import anyio.to_thread
from fastapi import APIRouter

from app.api.deps import DriftDep, RegistryDep, SettingsDep, StoreDep, VersionQuery
from app.auto_rollback import assess
from app.drift_report import DriftReport
from app.errors import ArtifactError, StoreUnavailable
from app.quality import live_quality, report
from app.schemas import ErrorResponse, ModelReport, ModelSummary

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(registry: RegistryDep) -> list[ModelSummary]:
    """Every model in the registry, with its versions, aliases and serving state."""
    return registry.summaries()


@router.get(
    "/models/{model}", responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
)
async def get_model(
    model: str, registry: RegistryDep, store: StoreDep, settings: SettingsDep
) -> ModelReport:
    """One model: aliases, loaded versions, refusals, the metadata of every version, each
    version's live quality (champion vs challenger) over the quality window, and its automatic
    rollback's policy and view of the latest promote."""
    entry = registry.entry(model)

    def build() -> ModelReport:
        status = assess(settings, store, entry.name)
        return report(entry, store, settings.quality_window_seconds, status)

    return await anyio.to_thread.run_sync(build)


@router.get(
    "/models/{model}/drift",
    responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def get_drift(
    model: str,
    registry: RegistryDep,
    drift: DriftDep,
    store: StoreDep,
    settings: SettingsDep,
    version: VersionQuery = None,
) -> DriftReport:
    """Input drift of one version (default: production) as this server served it: per feature
    the PSI and KS against its training profile, its status (ok / warn / drift at
    STEWARD_DRIFT_PSI_WARN / _DRIFT) and data-quality counts; the window and reference sizes;
    the accuracy the model expects of itself (estimated, no labels needed) next to its accuracy
    on feedback. Scores are computed every STEWARD_DRIFT_INTERVAL_SECONDS (``computed_at``)."""
    entry = registry.entry(model)
    found = drift.report(entry, version)

    def realised() -> DriftReport:
        try:
            metadata = {found.version: entry.metadata(found.version)}
            served = live_quality(store, entry.name, metadata, settings.quality_window_seconds)
        except (StoreUnavailable, ArtifactError):  # the drift report stands without it (a
            return found  # version whose metadata is unreadable is refused when asked to serve)
        quality = next(q for q in served if q.version == found.version and q.role == "served")
        return found.model_copy(
            update={"realised_accuracy": quality.accuracy, "labelled": quality.labelled}
        )

    return await anyio.to_thread.run_sync(realised)
