"""Automatic rollback (opt-in): production goes back to the version before a promote when the
promoted version's live figure turns out worse than that version's.

The policy: ``STEWARD_AUTO_ROLLBACK`` (off by default), ``..._MIN_LABELS`` and ``..._MARGIN``
for every model, unless the model has its own in its aliases file (``steward auto-rollback``,
``PUT /admin/models/{model}/auto-rollback``), which every replica and the CLI read.

The judgement (``assess``), for a model whose policy is on and whose production's latest change
in the alias history is a promote from an earlier version P to V, at T, within the last
STEWARD_QUALITY_WINDOW_SECONDS (an older promote is no longer watched: turning the policy on
never judges a version that has served for months):

- V's figure: its served (not shadow) predictions made since T, once at least ``min_labels`` of
  them are labelled: accuracy for a classifier, MAE for a regressor (by V's task);
- P's figure: its served predictions made while it was production (from its own promote, at
  most STEWARD_QUALITY_WINDOW_SECONDS before T) and before T, labelled since or not. With no
  label there, there is nothing to compare with: no automatic rollback (``no_baseline``);
- V is worse when its accuracy is below P's by more than the margin (absolute), or its MAE above
  P's by more than the margin (relative: ``mae > P's * (1 + margin)``), as app/gate.py judges.

``AutoRollback`` checks every ``STEWARD_AUTO_ROLLBACK_INTERVAL_SECONDS`` in a worker thread, and
rolls a worse V back through ``lifecycle.rollback`` (by ``auto-rollback``), naming the promote
it judged: the roll-back happens only while that promote is still production's latest change
(compare-and-set under the aliases lock), so replicas checking at once roll back once and a
change made since is never undone. It logs one WARNING line with the figures, counts
``steward_rollbacks_total{reason="accuracy_drop"|"mae_rise"}``, and rescans the registry. After
it, production's latest change is a roll-back: the model is idle until its next promote.
"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import anyio.to_thread

from app import lifecycle
from app.aliases import AliasFile, read_alias_file
from app.artifacts import list_models, read_metadata
from app.errors import ArtifactError, LifecycleConflict, StewardError
from app.gate import worse
from app.metrics import Metrics, RollbackReason
from app.periodic import Periodic
from app.schemas import AutoRollbackState, AutoRollbackStatus
from app.settings import Settings
from app.store import PredictionStore, VersionCounts

logger = logging.getLogger(__name__)

ACTOR = "auto-rollback"  # the ``by`` of the roll-backs it makes
Metric = Literal["accuracy", "mae"]


@dataclass(frozen=True)
class Policy:
    """The automatic-rollback policy that applies to one model, and where it comes from."""

    enabled: bool
    min_labels: int
    margin: float
    source: Literal["settings", "model"]
    set_by: str | None = None
    set_at: datetime | None = None


def policy(settings: Settings, aliases: AliasFile) -> Policy:
    """The model's own policy from its aliases file, its unset numbers the settings'; the
    settings' alone when it has none."""
    own = aliases.auto_rollback
    if own is None:
        return Policy(
            settings.auto_rollback,
            settings.auto_rollback_min_labels,
            settings.auto_rollback_margin,
            "settings",
        )
    return Policy(
        own.enabled,
        settings.auto_rollback_min_labels if own.min_labels is None else own.min_labels,
        settings.auto_rollback_margin if own.margin is None else own.margin,
        "model",
        own.by,
        own.at,
    )


def assess(settings: Settings, store: PredictionStore, name: str) -> AutoRollbackStatus:
    """Model ``name``'s automatic-rollback status now: its policy and, when on, the judgement
    of production's latest promote (see the module's docstring); ``unknown`` when its aliases
    file or the promoted version's metadata cannot be read. Blocking (reads them, and the
    store). StoreUnavailable if the store fails."""
    root = settings.models_dir
    try:
        aliases = read_alias_file(root, name)
    except ArtifactError as exc:
        applied = policy(settings, AliasFile(aliases={}))
        return _status(applied, state="unknown", reason=f"not checked: {exc.message}")
    applied = policy(settings, aliases)
    status = _status(applied, state="off", reason="automatic rollback is off for this model")
    if not applied.enabled:
        return status
    promote = lifecycle.latest_production_change(aliases)
    if promote is None or promote.action != "promote" or promote.from_ is None:
        return _with(
            status,
            state="idle",
            reason="nothing to judge: production's latest change is not a promote from an "
            "earlier version",
        )
    current, previous = promote.to, promote.from_
    status = _with(status, promote=promote)
    if datetime.now(UTC) - promote.at > timedelta(seconds=settings.quality_window_seconds):
        return _with(
            status,
            state="idle",
            reason=f"nothing to judge: the promote to v{current} is older than "
            "STEWARD_QUALITY_WINDOW_SECONDS, the span a promote is watched for",
        )
    try:
        task = read_metadata(root, name, current).task
    except ArtifactError as exc:
        return _with(status, state="unknown", reason=f"not checked: {exc.message}")
    metric: Metric = "accuracy" if task == "classification" else "mae"
    status = _with(status, metric=metric)
    after = _served(store.version_counts(name, promote.at), current)
    labelled = after.labelled if after else 0
    if labelled < applied.min_labels:
        return _with(
            status,
            state="waiting",
            labelled=labelled,
            reason=f"waiting: v{current} has {labelled} of {applied.min_labels} labels since its "
            "promote",
        )
    assert after is not None  # labelled >= min_labels >= 1
    figure = _figure(after, metric)
    start = max(promote.at - timedelta(seconds=settings.quality_window_seconds), _since(aliases))
    before = _served(store.version_counts(name, start, promote.at), previous)
    status = _with(status, labelled=labelled, figure=figure)
    if figure is None:  # a sum past the float range: nothing honest to compare
        return _with(status, state="no_baseline", reason=f"v{current}'s {metric} is not finite")
    if before is None or before.labelled == 0:
        return _with(
            status,
            state="no_baseline",
            previous_labelled=0,
            reason=f"no automatic rollback: v{previous} has no labelled live {metric} from "
            "before the promote to compare with",
        )
    previous_figure = _figure(before, metric)
    status = _with(status, previous_labelled=before.labelled, previous_figure=previous_figure)
    if previous_figure is None:  # a sum past the float range: nothing honest to compare
        return _with(status, state="no_baseline", reason=f"v{previous}'s {metric} is not finite")
    is_worse = worse(metric, figure, previous_figure, applied.margin)
    allowed = f"{applied.margin:g}" + (" relative" if metric == "mae" else "")
    compared = (
        f"v{current} {metric} {figure:.4f} over {labelled} labels since its promote, "
        f"v{previous} {previous_figure:.4f} over {before.labelled} before it"
    )
    if is_worse:
        return _with(
            status, state="worse", reason=f"worse by more than the margin ({allowed}): {compared}"
        )
    return _with(
        status,
        state="within_margin",
        reason=f"not worse by more than the margin ({allowed}): {compared}",
    )


def _status(applied: Policy, state: AutoRollbackState, reason: str) -> AutoRollbackStatus:
    return AutoRollbackStatus(
        enabled=applied.enabled,
        min_labels=applied.min_labels,
        margin=applied.margin,
        source=applied.source,
        set_by=applied.set_by,
        set_at=applied.set_at,
        state=state,
        reason=reason,
    )


def _with(status: AutoRollbackStatus, **update: object) -> AutoRollbackStatus:
    return status.model_copy(update=update)


def _served(counts: list[VersionCounts], version: int) -> VersionCounts | None:
    """``version``'s served rows among the counts (None: it served none in the window)."""
    return next((c for c in counts if c.version == version and not c.shadow), None)


def _since(aliases: AliasFile) -> datetime:
    """When the version before the latest promote became production (the earliest time when
    the history does not say)."""
    history = [entry for entry in aliases.history if entry.alias == "production"]
    if len(history) >= 2 and history[-2].to == history[-1].from_:
        return history[-2].at
    return datetime.min.replace(tzinfo=UTC)


def _figure(counts: VersionCounts, metric: Metric) -> float | None:
    value = (
        counts.correct / counts.labelled
        if metric == "accuracy"
        else counts.abs_error_sum / counts.labelled
    )
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Rollback:
    """A roll-back the automatic rollback made."""

    model: str
    reason: RollbackReason
    status: AutoRollbackStatus


class AutoRollback:
    """Checks every model's automatic rollback every ``settings.auto_rollback_interval_seconds``
    and rolls back the worse promotes; ``rescan`` (the watcher's) runs after a roll-back, so
    this server swaps at once."""

    def __init__(
        self,
        settings: Settings,
        store: PredictionStore,
        metrics: Metrics,
        rescan: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.rescan = rescan
        self._problems: dict[str, str] = {}  # the last problem logged per model: logged once
        self._periodic = Periodic(
            "automatic rollback check",
            settings.auto_rollback_interval_seconds,
            lambda: anyio.to_thread.run_sync(self.check),
        )

    def start(self) -> None:
        """Start the periodic check on the running event loop."""
        self._periodic.start()

    async def close(self) -> None:
        """Stop the periodic check; a check under way finishes first."""
        await self._periodic.close()

    def check(self) -> list[Rollback]:
        """Judge every model whose policy is on, and roll back the worse. Blocking."""
        made = []
        for name in list_models(self.settings.models_dir):
            try:
                rollback = self._check(name)
            except StewardError as exc:  # the store down: said once per model
                self._problem(name, f"not checked: {exc.message}")
                continue
            if rollback is not None:
                made.append(rollback)
        if made and self.rescan is not None:
            self.rescan()
        return made

    def _check(self, name: str) -> Rollback | None:
        status = assess(self.settings, self.store, name)
        if status.state == "unknown":
            self._problem(name, status.reason)
            return None
        if status.state != "worse" or status.promote is None:
            self._problems.pop(name, None)
            return None
        promote, root = status.promote, self.settings.models_dir
        try:
            lifecycle.rollback(root, name, by=ACTOR, expect=promote)
        except LifecycleConflict as exc:
            latest = lifecycle.latest_production_change(read_alias_file(root, name))
            if latest != promote:  # another replica, or a person, changed production first
                logger.info("auto-rollback %s: %s", name, exc.message)
            else:  # the version before cannot serve (its files are gone): said once
                self._problem(name, f"not rolled back: {exc.message}")
            return None
        self._problems.pop(name, None)
        reason: RollbackReason = "accuracy_drop" if status.metric == "accuracy" else "mae_rise"
        self.metrics.count_rollback(name, reason)
        logger.warning(
            "auto-rollback %s: production v%d -> v%d (%s): %s",
            name,
            promote.to,
            promote.from_,
            reason,
            status.reason,
        )
        return Rollback(name, reason, status)

    def _problem(self, name: str, message: str) -> None:
        """A model that cannot be checked, logged once until its message changes: the next
        checks would repeat it every interval."""
        if self._problems.get(name) != message:
            self._problems[name] = message
            logger.warning("auto-rollback %s: %s", name, message)
