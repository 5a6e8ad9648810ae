"""GET /models and GET /models/{model}: versions, aliases, metadata, live quality."""

import anyio.to_thread
from fastapi import APIRouter

from app.api.deps import RegistryDep, SettingsDep, StoreDep
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
    """One model: aliases, loaded versions, refusals, the metadata of every version, and each
    version's live quality (champion vs challenger) over the quality window."""
    entry = registry.entry(model)
    return await anyio.to_thread.run_sync(report, entry, store, settings.quality_window_seconds)
