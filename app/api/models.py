"""GET /models and GET /models/{model}: versions, aliases, metadata."""

from fastapi import APIRouter

from app.api.deps import RegistryDep
from app.errors import ArtifactError
from app.schemas import ErrorResponse, LoadedVersion, ModelDetail, ModelSummary

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(registry: RegistryDep) -> list[ModelSummary]:
    """Every model in the registry, with its versions, aliases and serving state."""
    summaries = []
    for name in registry.names:
        aliases = registry.aliases(name)
        production = aliases.get("production")
        loaded = {m.version: m for m in registry.loaded_versions(name)}
        refusals = list(registry.refusals.items())  # a lazy load may add one meanwhile
        refusal = next((r for (n, _), r in refusals if n == name), None)
        task = loaded[production].metadata.task if production in loaded else None
        summaries.append(
            ModelSummary(
                name=name,
                task=task,
                versions=registry.versions(name),
                aliases=aliases,
                serving=production if production in loaded else None,
                refused=refusal.message if refusal else None,
            )
        )
    return summaries


@router.get("/models/{model}", responses={404: {"model": ErrorResponse}})
def get_model(model: str, registry: RegistryDep) -> ModelDetail:
    """One model: aliases, loaded versions, refusals and the metadata of every version."""
    versions = []
    for number in registry.versions(model):
        try:
            versions.append(registry.metadata(model, number))
        except ArtifactError:
            continue  # named under refusals once someone asks for it; listed by number above
    aliases = registry.aliases(model)
    return ModelDetail(
        name=model,
        aliases=aliases,
        loaded=[
            LoadedVersion(
                version=m.version,
                aliases=sorted(a for a, v in aliases.items() if v == m.version),
                sklearn_mismatch=m.sklearn_mismatch,
            )
            for m in registry.loaded_versions(model)
        ],
        refusals=[
            {"version": r.version, "reason": r.reason, "message": r.message}
            for (n, _), r in list(registry.refusals.items())
            if n == model
        ],
        versions=versions,
    )
