"""GET /models and GET /models/{model}: versions, aliases, metadata."""

from fastapi import APIRouter

from app.api.deps import RegistryDep
from app.schemas import ErrorResponse, ModelDetail, ModelSummary

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(registry: RegistryDep) -> list[ModelSummary]:
    """Every model in the registry, with its versions, aliases and serving state."""
    return registry.summaries()


@router.get("/models/{model}", responses={404: {"model": ErrorResponse}})
def get_model(model: str, registry: RegistryDep) -> ModelDetail:
    """One model: aliases, loaded versions, refusals and the metadata of every version."""
    return registry.entry(model).detail()
