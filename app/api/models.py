"""GET /models and GET /models/{model}: versions, aliases, metadata, live quality, automatic
rollback."""

import anyio.to_thread
from fastapi import APIRouter

from app.api.deps import RegistryDep, SettingsDep, StoreDep
from app.auto_rollback import assess
from app.quality import report
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
