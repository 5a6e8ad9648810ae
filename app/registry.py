"""The served models: one entry per model, loaded at start-up, resolved per request, and
switched at run time. One model's entry and state, and what it answers on its own (the version
a request names, what /models shows, whether its traffic policy applies), are in
app/model_entry.py; this module loads, refuses and switches.

A version that cannot be trusted (app/loading.py) is refused: logged, kept on its model's entry
(named by /models, /readyz and a metric), and never served; the other models still serve. Other
versions load on first use, through the same checks.

Whoever keeps something per model version (metrics series, batcher lanes) subscribes to the
registry's hooks (``on_load``, ``on_swap``, ``on_refuse``, ``on_clear``, ``on_unload``,
``on_traffic``); nobody polls it. What changes on disk while serving reaches the registry
through app/watcher.py.

A model whose aliases file sets shadow or canary has its candidate loaded (and warmed up)
beside production; a candidate that is refused leaves production serving alone.
"""

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from app.aliases import TrafficPolicy, read_alias_file
from app.artifact_formats import ArtifactPolicy
from app.artifacts import (
    ModelMetadata,
    list_models,
    list_versions,
    read_metadata,
    unreadable_models,
)
from app.errors import ArtifactError, ModelUnavailable, UnknownModel, UnknownVersion
from app.loading import LoadedModel, Refusal, Refused, load_version
from app.model_entry import ModelEntry
from app.schemas import ModelSummary

logger = logging.getLogger(__name__)

_MODEL_DETAIL = [{"field": "model", "message": "not a model of this server (GET /models)"}]


# The hooks' signatures (see Registry).
VersionHook = Callable[[ModelEntry, LoadedModel], None]
SwapHook = Callable[[ModelEntry, str, int | None, int | None], None]
RefuseHook = Callable[[ModelEntry, Refusal], None]
TrafficHook = Callable[[ModelEntry, TrafficPolicy | None, TrafficPolicy], None]


class Registry:
    """Every model of the registry directory, one ModelEntry each, and hooks on their changes.

    Hooks are lists of callables; append one to subscribe. A hook runs in the thread that
    caused the event (a worker thread for a load on first use), under the registry's lock, so
    events reach each hook one at a time. A hook must be short and must not block: never wait
    on the event loop from one (hand work to the loop with ``call_soon_threadsafe``, as the
    batcher does), and call ``resolve``, ``point`` and ``unload``, which load from disk under
    that lock, from a worker thread, not from the event loop. One that raises is logged; the
    others still run, and the event stands.

    - ``on_load(entry, model)``: a version passed every check and is loaded.
    - ``on_swap(entry, alias, old, new)``: ``alias`` moved from version ``old`` (None: it was
      not set) to version ``new``, which is loaded (None: the alias was removed).
    - ``on_refuse(entry, refusal)``: a version, or the aliases file, was refused (once each).
    - ``on_clear(entry, refusal)``: the aliases file's refusal no longer holds (it was fixed).
      A version's refusal lasts: a version directory never changes once written.
    - ``on_unload(entry, model)``: a version left memory; no new request resolves to it.
    - ``on_traffic(entry, old, new)``: the model's traffic policy is ``new`` (``old`` None: the
      model is new to the registry, told its policy once, whatever it is).
    """

    def __init__(
        self,
        root: Path,
        max_instances: int,
        *,
        input_range_multiple: float = 0.0,
        target_range_multiple: float = 0.0,
        warm_up: Callable[[LoadedModel], bool] | None = None,
        twins: bool = True,
        policy: ArtifactPolicy | None = None,
    ) -> None:
        """``warm_up(model)`` (blocking) says whether a version works: one prediction on a
        typical row. Every version loaded after start-up passes it or is refused
        (``warmup_failed``); the production versions of ``load`` are served without it (with
        nothing else to serve, a broken model answers 500 rather than nothing). ``policy``:
        which artifacts may be loaded (pickle at all, the skops allowlist)."""
        self.root = root
        self.max_instances = max_instances
        self.input_range_multiple = input_range_multiple
        self.target_range_multiple = target_range_multiple
        self.warm_up = warm_up
        self.twins = twins
        self.policy = policy or ArtifactPolicy()
        self.on_load: list[VersionHook] = []
        self.on_swap: list[SwapHook] = []
        self.on_refuse: list[RefuseHook] = []
        self.on_clear: list[RefuseHook] = []
        self.on_unload: list[VersionHook] = []
        self.on_traffic: list[TrafficHook] = []
        self._entries: dict[str, ModelEntry] = {}
        self._only_at_start: str | None = None  # the default model when none is configured
        self._lock = threading.RLock()  # re-entrant: a hook that calls resolve does not deadlock

    def load(self) -> None:
        """Read every model of the registry directory and load its production version."""
        for name in list_models(self.root):
            self._add(name, warm=False)
        for name, problem in unreadable_models(self.root).items():
            self._add_unreadable(name, problem)
        if len(self._entries) == 1:
            self._only_at_start = next(iter(self._entries))

    def add(self, name: str) -> ModelEntry:
        """A model that appeared in the registry directory since ``load``: its entry, with its
        production version loaded (and warmed up) if it has one that passes, and its candidate
        too when its traffic policy is shadow or canary. Idempotent."""
        return self._entries.get(name) or self._add(name, warm=True)

    def _add(self, name: str, *, warm: bool) -> ModelEntry:
        with self._lock:
            if name in self._entries:
                return self._entries[name]
            try:
                entry = ModelEntry(self.root, name)
            except OSError as exc:  # a folder the service user cannot list (mode 000)
                return self._add_unreadable(name, unlistable(self.root, name, exc))
            # Replaced, not changed in place: readers iterate the entries without the lock.
            self._entries = {**self._entries, name: entry}
            try:
                aliases = read_alias_file(self.root, name)
            except ArtifactError as exc:
                self._refuse(entry, None, "aliases_unreadable", exc)
                self._fire(self.on_traffic, entry, None, entry.state.traffic)
                return entry
            entry.state = replace(entry.state, aliases=aliases.aliases, traffic=aliases.traffic)
            self._fire(self.on_traffic, entry, None, aliases.traffic)
            production = aliases.aliases.get("production")
            if production is None:
                logger.warning("model %s has no production version; not served by default", name)
            else:
                self._load_alias(entry, "production", production, warm=warm)
            candidate = aliases.aliases.get("candidate")
            if aliases.traffic.mode != "none" and candidate is not None and candidate != production:
                # Warmed up even at start-up: production serves if the candidate cannot.
                self._load_alias(entry, "candidate", candidate, warm=True)
            return entry

    def _add_unreadable(self, name: str, problem: str) -> ModelEntry:
        """A model whose folder cannot be read: named, refused (``folder_unreadable``), never
        served. Once its folder reads again, a rescan loads it and clears the refusal."""
        with self._lock:
            entry = ModelEntry(self.root, name, versions=())
            self._entries = {**self._entries, name: entry}
            self._refuse(entry, None, "folder_unreadable", problem)
            self._fire(self.on_traffic, entry, None, entry.state.traffic)
            return entry

    def _load_alias(self, entry: ModelEntry, alias: str, number: int, *, warm: bool) -> None:
        """Load the version ``alias`` names as a model is added. A refused one stays out of
        memory (refused and logged by ``_load``); one not on disk leaves the alias unset and
        refuses the aliases file (a rescan tries it again). Under the lock."""
        try:
            self._load(entry, number, warm=warm)
        except ModelUnavailable:
            pass
        except UnknownVersion as exc:
            state = entry.state
            served = {a: v for a, v in state.aliases.items() if a != alias}
            entry.state = replace(state, aliases=served)
            self._refuse(entry, None, "unknown_version", f"{alias} is v{number}: {exc}")

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    @property
    def entries(self) -> list[ModelEntry]:
        """Every model, by name."""
        return [entry for _, entry in sorted(self._entries.items())]

    def entry(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownModel("no such model", _MODEL_DETAIL)
        return entry

    def summaries(self) -> list[ModelSummary]:
        """What GET /models shows: every model with its versions, aliases and serving state."""
        return [entry.summary() for entry in self.entries]

    def production(self) -> dict[str, LoadedModel]:
        """The models that serve their production version, with that version, by name."""
        return {e.name: model for e in self.entries if (model := e.state.production)}

    def refused(self) -> dict[str, Refusal]:
        """The models kept from serving their production version by a refusal, by name."""
        return {e.name: refusal for e in self.entries if (refusal := e.state.refusal)}

    def default_name(self, configured: str | None) -> str:
        """The model behind POST /predict: the configured one, else the only one at start-up (a
        model added while serving does not take the default away from it), else the only one."""
        if configured:
            return configured
        if self._only_at_start is not None:
            return self._only_at_start
        if len(self._entries) == 1:
            return next(iter(self._entries))
        raise UnknownModel(
            "no default model: set STEWARD_DEFAULT_MODEL or use /predict/{model}",
            [{"field": "model", "message": f"one of {', '.join(self.names) or '(none)'}"}],
        )

    def cached(self, name: str, version: str | None = None) -> LoadedModel | None:
        """The loaded version for a request, if already in memory (no disk access).

        Raises UnknownModel / UnknownVersion / ModelUnavailable; None means "call resolve".
        """
        return self.entry(name).cached(version)

    def resolve(self, name: str, version: str | None = None) -> LoadedModel:
        """Like ``cached``, loading the version from disk when needed (blocking)."""
        entry = self.entry(name)
        loaded = entry.cached(version)
        if loaded is not None:
            return loaded
        number = entry.number(version)
        with self._lock:
            return self._load(entry, number, warm=True)

    def metadata(self, name: str, version: int) -> ModelMetadata:
        """Metadata of any version, served or not (feedback for older predictions)."""
        entry = self._entries.get(name)
        if entry is None:  # gone from the registry since its predictions were logged
            return read_metadata(self.root, name, version)
        return entry.metadata(version)

    def point(self, name: str, alias: str, version: int) -> LoadedModel:
        """Point ``alias`` of model ``name`` at ``version`` in memory: a run-time swap.

        The version is loaded first, through every check of a start-up load and a warm-up
        (see ``__init__``; a version loaded before is not warmed up again); only then does
        the alias move, in one step, so each request resolves the old version or the new one,
        never neither. Fires ``on_swap`` when the alias moved. A version refused now fires
        ``on_refuse`` (one refused before is not announced again); either way the alias stays
        where it was, its old version keeps serving, and ModelUnavailable is raised.

        aliases.json is not written: this is the switch that a change of that file, or the
        admin API, drives. The old version stays loaded until ``unload``.
        """
        entry = self.entry(name)
        with self._lock:
            model = self._load(entry, version, warm=True)
            state = entry.state
            old = state.aliases.get(alias)
            if old != version:
                entry.state = replace(state, aliases={**state.aliases, alias: version})
                was = "unset" if old is None else f"v{old}"
                logger.info("%s: %s is v%d (was %s)", name, alias, version, was)
                self._fire(self.on_swap, entry, alias, old, version)
        return model

    def set_traffic(self, name: str, policy: TrafficPolicy) -> None:
        """Replace the model's traffic policy in memory (its aliases file changed); fires
        ``on_traffic`` when it differs. The candidate is not loaded here: the watcher loads
        it, and ``challenger`` names it once it is."""
        entry = self.entry(name)
        with self._lock:
            old = entry.state.traffic
            if old == policy:
                return
            entry.state = replace(entry.state, traffic=policy)
            logger.info(
                "%s: traffic %s %g%% (was %s %g%%; by %s)",
                name,
                policy.mode,
                policy.percent,
                old.mode,
                old.percent,
                policy.by or "-",
            )
            self._fire(self.on_traffic, entry, old, policy)

    def unload(self, name: str, version: int) -> None:
        """Take a version no alias points at out of memory (the old one, after a swap).

        Fires ``on_unload``. Requests that resolved it before finish on it; a later request
        for it by number loads it again. Raises ValueError while an alias points at it; a
        version not loaded is left alone.
        """
        entry = self.entry(name)
        with self._lock:
            state = entry.state
            model = state.loaded.get(version)
            if model is None:
                return
            aliases = state.aliases_of(version)
            if aliases:
                raise ValueError(f"{name} v{version} is {', '.join(aliases)}: move the alias first")
            loaded = {number: m for number, m in state.loaded.items() if number != version}
            entry.state = replace(state, loaded=loaded)
            logger.info("unloaded %s v%d", name, version)
            self._fire(self.on_unload, entry, model)

    def reload(self, name: str, version: int) -> LoadedModel | None:
        """Load a loaded version again from disk, its compilation having changed there
        (``steward compile``): checked and warmed up, the new copy replaces the old in one
        step, and ``on_unload`` (old) then ``on_load`` (new) fire. Requests that resolved the
        old copy finish on it. A copy that fails a check is logged and left out: the old one
        keeps serving. None when the version is not loaded, or was not replaced."""
        entry = self.entry(name)
        with self._lock:
            old = entry.state.loaded.get(version)
            if old is None:
                return None
            try:
                new = self._read(name, version)
            except Refused as exc:
                logger.warning("%s v%d not reloaded (%s): %s", name, version, exc.reason, exc)
                return None
            if self.warm_up is not None and not self.warm_up(new):
                logger.warning("%s v%d not reloaded: it cannot score a typical row", name, version)
                return None
            entry.state = replace(entry.state, loaded={**entry.state.loaded, version: new})
            logger.info("reloaded %s v%d: serves on %s", name, version, new.runtime)
            self._fire(self.on_unload, entry, old)
            self._fire(self.on_load, entry, new)
        return new

    def unset(self, name: str, alias: str) -> int | None:
        """Remove ``alias`` in memory (it left the aliases file); the version it named, if any.
        Fires ``on_swap`` with ``new`` None. The version stays loaded until ``unload``."""
        entry = self.entry(name)
        with self._lock:
            state = entry.state
            old = state.aliases.get(alias)
            if old is not None:
                aliases = {a: number for a, number in state.aliases.items() if a != alias}
                entry.state = replace(state, aliases=aliases)
                logger.info("%s: %s removed (was v%d)", name, alias, old)
                self._fire(self.on_swap, entry, alias, old, None)
            return old

    def refresh_versions(self, name: str) -> list[int]:
        """Read the model's version numbers from disk again; the ones new since last read.
        OSError when the model's folder cannot be listed (the versions known stay)."""
        entry = self.entry(name)
        with self._lock:
            state = entry.state
            versions = tuple(list_versions(self.root, name))
            if versions != state.versions:
                entry.state = replace(state, versions=versions)
            return sorted(set(versions) - set(state.versions))

    def refuse_aliases(self, name: str, reason: str, problem: str) -> Refusal | None:
        """The aliases file cannot be applied whole (unreadable, or naming a version that cannot
        serve): refused, while the aliases already in memory keep serving. The refusal when it
        is new (fires ``on_refuse``), None when the same one is already recorded."""
        entry = self.entry(name)
        with self._lock:
            same = Refusal(name, None, reason, self._message(entry, reason, problem))
            if entry.state.refusals.get(None) == same:
                return None
            self._refuse(entry, None, reason, problem)
            return entry.state.refusals[None]

    def clear_aliases_refusal(self, name: str) -> Refusal | None:
        """The aliases file applies whole again: its refusal, if any, is dropped (fires
        ``on_clear``) and returned."""
        entry = self.entry(name)
        with self._lock:
            state = entry.state
            refusal = state.refusals.get(None)
            if refusal is not None:
                refusals: dict[int | None, Refusal] = {
                    v: r for v, r in state.refusals.items() if v is not None
                }
                entry.state = replace(state, refusals=refusals)
                logger.info("%s: aliases apply again (%s cleared)", name, refusal.reason)
                self._fire(self.on_clear, entry, refusal)
            return refusal

    def _load(self, entry: ModelEntry, number: int, *, warm: bool) -> LoadedModel:
        """Version ``number`` of ``entry``, loaded now if it is not yet (and then warmed up
        when ``warm``). Under the lock."""
        state = entry.state
        if number in state.loaded:
            return state.loaded[number]
        if number in state.refusals:
            raise state.refusals[number].unavailable()
        if number not in state.versions:
            try:
                versions = tuple(list_versions(self.root, entry.name))  # registered since?
            except OSError:  # the folder cannot be listed: the rescan names it
                versions = state.versions
            entry.state = replace(state, versions=versions)
            if number not in versions:
                raise UnknownVersion(f"model {entry.name!r} has no such version", model=entry.name)
        try:
            loaded = self._read(entry.name, number)
        except Refused as exc:
            raise self._refuse(entry, number, exc.reason, exc) from exc
        if warm and self.warm_up is not None and not self.warm_up(loaded):
            problem = f"v{number} cannot score a typical row (its training medians)"
            raise self._refuse(entry, number, "warmup_failed", problem)
        entry.state = replace(entry.state, loaded={**entry.state.loaded, number: loaded})
        logger.info("loaded %s v%d", entry.name, number)
        self._fire(self.on_load, entry, loaded)
        return loaded

    def _read(self, name: str, number: int) -> LoadedModel:
        return load_version(
            self.root,
            name,
            number,
            max_instances=self.max_instances,
            input_range_multiple=self.input_range_multiple,
            target_range_multiple=self.target_range_multiple,
            twins=self.twins,
            policy=self.policy,
        )

    def _refuse(
        self, entry: ModelEntry, version: int | None, reason: str, problem: Exception | str
    ) -> ModelUnavailable:
        refusal = Refusal(entry.name, version, reason, self._message(entry, reason, problem))
        entry.state = replace(entry.state, refusals={**entry.state.refusals, version: refusal})
        logger.error("%s", refusal.message)
        self._fire(self.on_refuse, entry, refusal)
        return refusal.unavailable()

    @staticmethod
    def _message(entry: ModelEntry, reason: str, problem: Exception | str) -> str:
        return f"{entry.name}: refused ({reason}): {problem}"

    @staticmethod
    def _fire(hooks: Sequence[Callable[..., None]], *args: object) -> None:
        for hook in hooks:
            try:
                hook(*args)
            except Exception:  # a subscriber's bug must not undo a load or a swap
                logger.exception("registry hook %r failed", hook)


def unlistable(root: Path, name: str, exc: OSError) -> str:
    """Why a model's folder cannot be listed, for a ``folder_unreadable`` refusal (the same
    words at start-up and on a rescan, so it is logged once): named relative to the registry
    folder, since the message reaches /readyz and 503 bodies."""
    why = exc.strerror or type(exc).__name__
    logger.debug("cannot list %s: %s", root / name, exc)
    return f"its folder {name}/ cannot be listed: {why} (is it readable by the service user?)"
