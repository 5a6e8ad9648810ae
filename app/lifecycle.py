"""A model's life in the registry: promote a version, roll back, set the traffic policy and
the automatic-rollback policy, describe its versions.

Each change is a read-modify-write of aliases.json under the model's lock, replaced atomically
(``aliases.record_alias``, ``aliases.record_traffic``); an alias move is appended to the
history. The CLI and the admin API call these functions: each answers with the model's new alias
state, traffic policy included.

The traffic policy (``set_traffic``) sends requests to the ``candidate`` alias beside
``production``: ``shadow`` (the candidate also predicts ``percent`` of the requests, never
answering) or ``canary`` (it answers ``percent`` of them). It needs a candidate that is not the
production version. Promoting production to the candidate's version ends the experiment: the
same write sets the policy back to ``none``. Moving or removing the candidate keeps the policy
(it follows the alias; with no candidate, production answers everything).

Roll back undoes the latest production promote not undone yet, so repeated roll-backs keep going
back: with production promoted 1 -> 2 -> 3, a roll-back returns to 2, the next to 1, the next
fails (nothing before 1). A promote after a roll-back is undone first by the next roll-back.
Only ``production`` changes count; ``candidate`` has no roll-back.
"""

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import cast, get_args

from pydantic import BaseModel, ConfigDict

from app.aliases import (
    ALIAS_NAMES,
    MAX_ACTOR,
    MAX_MIN_LABELS,
    AliasChange,
    AliasFile,
    AutoRollbackPolicy,
    TrafficMode,
    TrafficPolicy,
    aliases_locked,
    process_actor,
    read_alias_file,
    record_alias,
    record_auto_rollback,
    record_traffic,
)
from app.artifacts import (
    NAME_PATTERN,
    ModelMetadata,
    TrainingData,
    list_models,
    list_versions,
    read_metadata,
)
from app.errors import (
    ArtifactError,
    LifecycleConflict,
    UnknownModel,
    UnknownVersion,
    ValidationFailed,
)
from app.features import same_inputs

TRAFFIC_MODES: tuple[TrafficMode, ...] = get_args(TrafficMode)
FULL_SHADOW = 100.0  # a shadow's percent when none is given: every request


class AliasState(BaseModel):
    """A model's aliases, their history and its traffic policy after a change; ``change`` is
    the entry this call appended (None: no alias moved)."""

    model_config = ConfigDict(frozen=True)

    model: str
    aliases: dict[str, int]
    history: list[AliasChange]
    change: AliasChange | None
    traffic: TrafficPolicy


class VersionInfo(BaseModel):
    """One version as `steward versions` shows it: its metadata (None, with ``unreadable``
    saying why, when metadata.json cannot be read) and the aliases pointing at it."""

    model_config = ConfigDict(frozen=True)

    version: int
    aliases: list[str]
    created_at: datetime | None = None
    task: str | None = None
    metrics: dict[str, float] = {}
    training_data: TrainingData | None = None
    unreadable: str | None = None


class ModelVersions(BaseModel):
    """Every version of a model, and its alias history (oldest first)."""

    model_config = ConfigDict(frozen=True)

    model: str
    versions: list[VersionInfo]
    history: list[AliasChange]
    traffic: TrafficPolicy


def promote(
    root: Path,
    name: str,
    version: int,
    alias: str = "production",
    *,
    by: str | None = None,
    judged_against: int | None = None,
) -> AliasState:
    """Point ``alias`` of model ``name`` at ``version``, which must exist with readable
    metadata. ``by`` names who asked (default: ``user@host`` of this process).

    ``judged_against``: promote only while production is still that version, checked under
    the lock (LifecycleConflict otherwise). A retraining names the version its gate compared
    the new one with: two retrainings at once never alias a version judged against a
    production that has moved on."""
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
        production = read_alias_file(root, name).aliases.get("production")
        if judged_against is not None and production != judged_against:
            raise LifecycleConflict(
                f"{name}: production is version {production} now, not version "
                f"{judged_against} that version {version} was judged against: it is kept, {alias} "
                "not moved",
                model=name,
            )
        return _state(name, *record_alias(root, name, alias, version, by=by))


def rollback(
    root: Path, name: str, *, by: str | None = None, expect: AliasChange | None = None
) -> AliasState:
    """Point ``production`` back where it was before the latest promote not yet undone (see
    the module's docstring); LifecycleConflict when the history has nothing to go back to.

    ``expect``: roll back only while the latest production change of the history is still
    that one, checked under the lock (compare-and-set; LifecycleConflict otherwise). The
    automatic rollback names the promote it judged: two replicas judging it at once roll back
    once, and a change made since (a promote, a roll-back) is never undone by it."""
    _check_model(root, name)
    _check_actor(by)
    with aliases_locked(root, name):  # the history read is the one the change extends
        current = read_alias_file(root, name)
        if expect is not None and latest_production_change(current) != expect:
            raise LifecycleConflict(
                f"{name}: production changed since the promote to version {expect.to} at "
                f"{expect.at.isoformat()}; not rolled back",
                model=name,
            )
        target = previous_production(current)
        if target is None:
            raise LifecycleConflict(
                f"{name}: no earlier production version to roll back to (no promote of production "
                "is left to undo in the alias history; `steward promote` names a version "
                "instead)",
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


def set_traffic(
    root: Path,
    name: str,
    mode: str,
    percent: float | None = None,
    *,
    by: str | None = None,
) -> AliasState:
    """Set model ``name``'s traffic policy: ``mode`` none, shadow or canary, and ``percent``
    (0-100) of the requests it applies to: omitted, 100 for shadow and 0 for none; canary needs
    it. Shadow and canary need a ``candidate`` alias that is not the production version
    (LifecycleConflict, saying how to set one). The same mode and percent again writes nothing.
    ``by`` names who asked (default: ``user@host`` of this process)."""
    _check_model(root, name)
    _check_actor(by)
    share = _traffic_percent(name, mode, percent)
    with aliases_locked(root, name):  # the candidate checked is the one the policy is for
        current = read_alias_file(root, name)
        candidate = None
        if mode != "none":
            candidate = _check_candidate(root, name, mode, current.aliases)
        policy = TrafficPolicy(
            mode=cast(TrafficMode, mode),
            percent=share,
            candidate=candidate,
            at=datetime.now(UTC),
            by=by or process_actor(),
        )
        return _state(name, record_traffic(root, name, policy), None)


def _traffic_percent(name: str, mode: str, percent: float | None) -> float:
    """The percent a policy stores, or ValidationFailed naming ``mode`` or ``percent``."""
    if mode not in TRAFFIC_MODES:
        raise ValidationFailed(
            f"mode must be one of {', '.join(TRAFFIC_MODES)}",
            [{"field": "mode", "message": f"one of {', '.join(TRAFFIC_MODES)}"}],
            model=name,
        )
    if percent is None:
        if mode == "canary":
            raise ValidationFailed(
                "percent is required for canary: the share of requests (0-100) the candidate "
                "answers",
                [{"field": "percent", "message": "required for canary"}],
                model=name,
            )
        return FULL_SHADOW if mode == "shadow" else 0.0
    if type(percent) not in (int, float) or not (math.isfinite(percent) and 0 <= percent <= 100):
        raise ValidationFailed(
            "percent must be a number from 0 to 100",
            [{"field": "percent", "message": "a number from 0 to 100"}],
            model=name,
        )
    if mode == "none" and percent != 0:
        raise ValidationFailed(
            "percent must be 0, or omitted, when mode is none (production answers everything)",
            [{"field": "percent", "message": "0 or omitted when mode is none"}],
            model=name,
        )
    return float(percent)


def _check_candidate(root: Path, name: str, mode: str, aliases: dict[str, int]) -> int:
    """The candidate version a shadow or canary policy is for; LifecycleConflict when there is
    none, it is production, or (canary) it reads other inputs than production: a canary would
    refuse requests that production accepts."""
    candidate = aliases.get("candidate")
    how = f"`steward promote {name} VERSION --alias candidate`"
    if candidate is None:
        raise LifecycleConflict(
            f"{name}: {mode} needs a candidate version, and {name} has none: set one with "
            f"{how} (or the admin API's promote with alias candidate)",
            model=name,
        )
    if candidate == aliases.get("production"):
        raise LifecycleConflict(
            f"{name}: {mode} needs a candidate other than production, and both are version "
            f"{candidate}: point the candidate at another version with {how}",
            model=name,
        )
    production = aliases.get("production")
    if mode == "canary" and production is not None:
        inputs = {v: _check_version(root, name, v).features for v in (production, candidate)}
        if not same_inputs(inputs[production], inputs[candidate]):
            raise LifecycleConflict(
                f"{name}: candidate v{candidate} reads other inputs than production "
                f"v{production}: as a canary it would refuse requests production accepts; "
                "shadow it instead (its refusals are counted, never answered)",
                model=name,
            )
    return candidate


def latest_production_change(aliases: AliasFile) -> AliasChange | None:
    """The history's latest move of ``production`` (a promote or a roll-back), if any."""
    for entry in reversed(aliases.history):
        if entry.alias == "production":
            return entry
    return None


def set_auto_rollback(
    root: Path,
    name: str,
    enabled: bool,
    min_labels: int | None = None,
    margin: float | None = None,
    *,
    by: str | None = None,
) -> AutoRollbackPolicy:
    """Set model ``name``'s own automatic-rollback policy in its aliases file (app/
    auto_rollback.py): on or off, and the least labels (1 to 1e9) and the margin (0 to 1),
    each None to keep the setting's. ``by`` names who asked (default: ``user@host`` of this
    process). Returns the policy as written."""
    _check_model(root, name)
    _check_actor(by)
    if type(enabled) is not bool:
        raise _invalid(name, "enabled", "true or false")
    if min_labels is not None and not (
        type(min_labels) is int and 1 <= min_labels <= MAX_MIN_LABELS
    ):
        raise _invalid(name, "min_labels", f"a whole number from 1 to {MAX_MIN_LABELS}")
    if margin is not None and not (
        type(margin) in (int, float) and math.isfinite(margin) and 0 <= margin <= 1
    ):
        raise _invalid(name, "margin", "a number from 0 to 1")
    policy = AutoRollbackPolicy(
        enabled=enabled,
        min_labels=min_labels,
        margin=None if margin is None else float(margin),
        at=datetime.now(UTC),
        by=by or process_actor(),
    )
    with aliases_locked(root, name):
        return record_auto_rollback(root, name, policy).auto_rollback or policy


def _invalid(name: str, field: str, rule: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field} must be {rule}", [{"field": field, "message": rule}], model=name
    )


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
                training_data=metadata.training_data,
            )
        )
    return ModelVersions(
        model=name, versions=versions, history=aliases.history, traffic=aliases.traffic
    )


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
    return AliasState(
        model=name,
        aliases=written.aliases,
        history=written.history,
        change=change,
        traffic=written.traffic,
    )
