"""Hot swap: the registry directory, rescanned while serving, drives the registry.

Every ``interval`` seconds (and on ``reload``, which ``POST /admin/reload`` calls) the directory
is read again in a worker thread: a new model gets its entry and its production version; new
versions are listed; each model's aliases file is compared, by content, with the aliases in
memory, and each difference is applied with ``Registry.point`` (load, checks, warm-up, then the
switch) or ``Registry.unset``. A version that lost its last alias is unloaded: requests already
on it finish on it. A change that cannot be applied (a version refused, an alias naming a
version not on disk, an unreadable file) leaves the last good state serving and refuses the
aliases file until a later content applies whole.

The traffic policy is applied after the aliases (``Registry.set_traffic``, when it differs):
it follows the ``candidate`` alias wherever that moves; with the alias removed, production
answers everything. While the policy is shadow or canary, the candidate is loaded (checks,
warm-up) if it is not yet; one refused is reported once and production serves alone.

The file is read whole with ``app.aliases.read_alias_file``, whatever its format (one
without a traffic policy is mode ``none``).

A loaded version whose metadata.json changed on disk (its modification time) is read again;
when its ``compilation`` differs from the one loaded (``steward compile`` gave it a new twin, or
took it away), it is loaded again with ``Registry.reload``: checks, the twin's proof, warm-up,
then the switch, so the twin serves without a restart.
"""

import logging
import threading

import anyio.to_thread
from pydantic import BaseModel, Field

from app.aliases import TrafficPolicy, read_alias_file
from app.artifacts import METADATA, list_models, read_metadata
from app.errors import ArtifactError, ModelUnavailable, UnknownVersion
from app.periodic import Periodic
from app.registry import Registry, unlistable

logger = logging.getLogger(__name__)


class AliasMove(BaseModel):
    """An alias switched in memory: ``old`` None when it was not set, ``new`` None when removed."""

    model: str
    alias: str
    old: int | None
    new: int | None


class ReloadProblem(BaseModel):
    """A change found on disk and not applied; the last good state keeps serving."""

    model: str
    reason: str
    message: str


class ReloadReport(BaseModel):
    """What one rescan changed."""

    added: list[str] = Field(default_factory=list, description="Models new to the server.")
    versions: dict[str, list[int]] = Field(
        default_factory=dict, description="Versions new on disk, by model."
    )
    moved: list[AliasMove] = Field(default_factory=list)
    unloaded: dict[str, list[int]] = Field(
        default_factory=dict, description="Versions out of memory after their alias moved."
    )
    refused: list[ReloadProblem] = Field(default_factory=list)
    traffic: dict[str, TrafficPolicy] = Field(
        default_factory=dict, description="Traffic policies new on disk, by model."
    )
    recompiled: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Loaded versions loaded again because `steward compile` changed their twin.",
    )

    @property
    def changed(self) -> bool:
        return bool(
            self.added
            or self.versions
            or self.moved
            or self.unloaded
            or self.refused
            or self.traffic
            or self.recompiled
        )


class Watcher:
    """Rescans the registry directory every ``interval`` seconds (0: only on ``reload``)."""

    def __init__(self, registry: Registry, interval: float) -> None:
        self.registry = registry
        self.interval = interval
        self._lock = threading.Lock()  # one scan at a time: the periodic one or a reload
        self._metadata_mtimes: dict[tuple[str, int], int] = {}  # of loaded versions
        self._periodic = Periodic("registry rescan", interval, self.reload)

    def start(self) -> None:
        """Start the periodic rescan on the running event loop (nothing when interval is 0)."""
        if self.interval > 0:
            self._periodic.start()

    async def close(self) -> None:
        """Stop the periodic rescan; a scan under way finishes first."""
        await self._periodic.close()

    async def reload(self) -> ReloadReport:
        """Rescan now, in a worker thread."""
        return await anyio.to_thread.run_sync(self.scan)

    def scan(self) -> ReloadReport:
        """Rescan the registry directory and apply what changed. Blocking."""
        report = ReloadReport()
        with self._lock:
            known = set(self.registry.names)
            for name in list_models(self.registry.root):
                if name in known:
                    self._sync(name, report)
                else:
                    self.registry.add(name)
                    logger.info("new model %s", name)
                    report.added.append(name)
        return report

    def _sync(self, name: str, report: ReloadReport) -> None:
        registry = self.registry
        entry = registry.entry(name)
        try:
            new = registry.refresh_versions(name)
        except OSError as exc:  # a folder the service user cannot list (mode 000)
            kept = "; the last good aliases stay" if entry.state.aliases else ""
            message = unlistable(registry.root, name, exc) + kept
            self._refuse(name, "folder_unreadable", message, report)
            return
        if new:
            logger.info("%s: new versions %s", name, ", ".join(map(str, new)))
            report.versions[name] = new
        try:
            file = read_alias_file(registry.root, name)
        except ArtifactError as exc:
            kept = "; the last good aliases stay" if entry.state.aliases else ""
            self._refuse(name, "aliases_unreadable", f"{exc}{kept}", report)
            return
        wanted = file.aliases
        problems: list[ReloadProblem] = []
        left: set[int] = set()
        for alias, version in sorted(wanted.items()):
            old = entry.state.aliases.get(alias)
            if old == version:
                continue
            try:
                registry.point(name, alias, version)
            except (ModelUnavailable, UnknownVersion) as exc:
                refusal = entry.state.refusals.get(version)
                reason = refusal.reason if refusal else "unknown_version"
                keeps = f"v{old} keeps serving" if old is not None else "it stays unset"
                why = exc.message.removeprefix(f"{name}: refused ({reason}): ")
                problems.append(
                    ReloadProblem(
                        model=name,
                        reason=reason,
                        message=f"{alias} -> v{version} not applied ({keeps}): {why}",
                    )
                )
                continue
            report.moved.append(AliasMove(model=name, alias=alias, old=old, new=version))
            if old is not None:
                left.add(old)
        for alias in sorted(set(entry.state.aliases) - set(wanted)):
            old = registry.unset(name, alias)
            report.moved.append(AliasMove(model=name, alias=alias, old=old, new=None))
            if old is not None:
                left.add(old)
        for version in sorted(left):
            if not entry.state.aliases_of(version) and version in entry.state.loaded:
                registry.unload(name, version)
                report.unloaded.setdefault(name, []).append(version)
        if problems:
            message = "; ".join(p.message for p in problems)
            self._refuse(name, problems[0].reason, message, report)
        else:
            registry.clear_aliases_refusal(name)
        self._apply_traffic(name, file.traffic, report)
        self._reload_recompiled(name, report)

    def _reload_recompiled(self, name: str, report: ReloadReport) -> None:
        """Load again each loaded version whose compilation changed on disk."""
        registry = self.registry
        for number, model in sorted(registry.entry(name).state.loaded.items()):
            path = registry.root / name / str(number) / METADATA
            try:
                mtime = path.stat().st_mtime_ns
                if self._metadata_mtimes.get((name, number)) == mtime:
                    continue
                self._metadata_mtimes[(name, number)] = mtime
                compilation = read_metadata(registry.root, name, number).compilation
            except (OSError, ArtifactError):
                continue  # the loaded copy serves on; a later load reports what is wrong
            if compilation != model.metadata.compilation and registry.reload(name, number):
                report.recompiled.setdefault(name, []).append(number)

    def _apply_traffic(self, name: str, policy: TrafficPolicy, report: ReloadReport) -> None:
        """The file's traffic policy, after its aliases; the candidate loaded while the policy
        wants it. A candidate refused here is reported once (its refusal stays on the entry),
        without refusing the aliases file: production serves on, alone."""
        registry = self.registry
        entry = registry.entry(name)
        if entry.state.traffic != policy:
            registry.set_traffic(name, policy)
            report.traffic[name] = policy
        state = entry.state
        candidate = state.aliases.get("candidate")
        if (
            policy.mode == "none"
            or candidate is None
            or candidate == state.aliases.get("production")
            or candidate in state.loaded
            or candidate in state.refusals
            or candidate not in state.versions  # named by GET /models/{model}, not retried
        ):
            return
        try:
            registry.point(name, "candidate", candidate)  # the alias stays: a load, no swap
        except ModelUnavailable as exc:
            refusal = entry.state.refusals.get(candidate)
            reason = refusal.reason if refusal else "load_error"
            why = exc.message.removeprefix(f"{name}: refused ({reason}): ")
            message = f"traffic {policy.mode}: candidate v{candidate} not loaded: {why}"
            logger.warning("%s: %s", name, message)
            report.refused.append(ReloadProblem(model=name, reason=reason, message=message))

    def _refuse(self, name: str, reason: str, message: str, report: ReloadReport) -> None:
        """Record the aliases file's refusal (logged and announced once by the registry)."""
        self.registry.refuse_aliases(name, reason, message)
        report.refused.append(ReloadProblem(model=name, reason=reason, message=message))
