"""A model's life in the registry: promote a version, roll back, describe its versions.

Each change goes through ``artifacts.set_alias``: under the model's lock, appended to the
history in aliases.json, replaced atomically. The CLI calls these functions, and the admin API
can: each answers with the model's new alias state.

Roll back undoes the latest production promote not undone yet, so repeated roll-backs keep going
back: with production promoted 1 -> 2 -> 3, a roll-back returns to 2, the next to 1, the next
fails (nothing before 1). A promote after a roll-back is undone first by the next roll-back.
Only ``production`` changes count; ``candidate`` has no roll-back.
"""

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from app.artifacts import (
    ALIAS_NAMES,
    MAX_ACTOR,
    NAME_PATTERN,
    AliasChange,
    AliasFile,
    ModelMetadata,
    aliases_locked,
    list_models,
    list_versions,
    read_alias_file,
    read_metadata,
    record_alias,
)
from app.errors import (
    ArtifactError,
    LifecycleConflict,
    UnknownModel,
    UnknownVersion,
    ValidationFailed,
)


class AliasState(BaseModel):
    """A model's aliases and their history after a change; ``change`` is the entry this call
    appended (None: the alias already pointed there, nothing was written)."""

    model_config = ConfigDict(frozen=True)

    model: str
    aliases: dict[str, int]
    history: list[AliasChange]
    change: AliasChange | None


class VersionInfo(BaseModel):
    """One version as `steward versions` shows it: its metadata (None, with ``unreadable``
    saying why, when metadata.json cannot be read) and the aliases pointing at it."""

    model_config = ConfigDict(frozen=True)

    version: int
    aliases: list[str]
    created_at: datetime | None = None
    task: str | None = None
    metrics: dict[str, float] = {}
    unreadable: str | None = None


class ModelVersions(BaseModel):
    """Every version of a model, and its alias history (oldest first)."""

    model_config = ConfigDict(frozen=True)

    model: str
    versions: list[VersionInfo]
    history: list[AliasChange]


def promote(
    root: Path, name: str, version: int, alias: str = "production", *, by: str | None = None
) -> AliasState:
    """Point ``alias`` of model ``name`` at ``version``, which must exist with readable
    metadata. ``by`` names who asked (default: ``user@host`` of this process)."""
    _check_model(root, name)
    _check_actor(by)
    if alias not in ALIAS_NAMES:
        raise ValidationFailed(
            f"alias must be one of {', '.join(ALIAS_NAMES)}",
            [{"field": "alias", "message": f"one of {', '.join(ALIAS_NAMES)}"}],
            model=name,
        )
    with aliases_locked(root, name):
        _check_version(root, name, version)
        return _state(name, *record_alias(root, name, alias, version, by=by))


def rollback(root: Path, name: str, *, by: str | None = None) -> AliasState:
    """Point ``production`` back where it was before the latest promote not yet undone (see
    the module's docstring); LifecycleConflict when the history has nothing to go back to."""
    _check_model(root, name)
    _check_actor(by)
    with aliases_locked(root, name):  # the history read is the one the change extends
        target = previous_production(read_alias_file(root, name))
        if target is None:
            raise LifecycleConflict(
                f"{name}: no earlier production version to roll back to (the alias history "
                "has none; `steward promote` names a version instead)",
                model=name,
            )
        try:
            _check_version(root, name, target)
        except (UnknownVersion, LifecycleConflict) as exc:
            raise LifecycleConflict(
                f"cannot roll {name} back to version {target}: {exc.message}", model=name
            ) from exc
        written = record_alias(root, name, "production", target, by=by, action="rollback")
        return _state(name, *written)


def previous_production(aliases: AliasFile) -> int | None:
    """The version a roll-back returns production to, or None when there is none."""
    undone = 0
    for entry in reversed(aliases.history):
        if entry.alias != "production":
            continue
        if entry.action == "rollback":
            undone += 1
        elif undone:
            undone -= 1
        else:
            return entry.from_
    return None


def describe(root: Path, name: str) -> ModelVersions:
    """Every version of ``name`` with its offline metrics and aliases, and the alias history.

    Live quality per version (labelled count, accuracy or MAE/RMSE from the store) is not here:
    it comes from the prediction store (app/quality.py), which this module does not open.
    """
    _check_model(root, name)
    aliases = read_alias_file(root, name)
    versions = []
    for version in list_versions(root, name):
        tags = [a for a, v in sorted(aliases.aliases.items()) if v == version]
        try:
            metadata = read_metadata(root, name, version)
        except ArtifactError as exc:
            versions.append(VersionInfo(version=version, aliases=tags, unreadable=exc.message))
            continue
        versions.append(
            VersionInfo(
                version=version,
                aliases=tags,
                created_at=metadata.created_at,
                task=metadata.task,
                metrics=metadata.metrics,
            )
        )
    return ModelVersions(model=name, versions=versions, history=aliases.history)


def _check_model(root: Path, name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise UnknownModel(
            "no such model: a model name is 1-64 of a-z, 0-9, '.', '_', '-'",
            [{"field": "model", "message": "not a model name"}],
        )
    if name not in list_models(root):
        raise UnknownModel(f"no model {name!r} in {root}", model=name)


def _check_actor(by: str | None) -> None:
    if by is not None and not (0 < len(by) <= MAX_ACTOR and by.isprintable()):
        raise ValidationFailed(
            f"by (who made the change) must be 1-{MAX_ACTOR} printable characters",
            [{"field": "by", "message": f"1-{MAX_ACTOR} printable characters"}],
        )


def _check_version(root: Path, name: str, version: int) -> ModelMetadata:
    if type(version) is not int or version not in list_versions(root, name):
        known = ", ".join(str(v) for v in list_versions(root, name)) or "none"
        raise UnknownVersion(f"{name} has no version {version} (versions: {known})", model=name)
    try:
        return read_metadata(root, name, version)
    except ArtifactError as exc:
        raise LifecycleConflict(f"{exc.message}; not promoted", model=name) from exc


def _state(name: str, written: AliasFile, change: AliasChange | None) -> AliasState:
    return AliasState(model=name, aliases=written.aliases, history=written.history, change=change)
