"""Input drift while serving: a window per loaded version (app/drift_window.py), judged
against its training profile (app/drift_report.py, app/drift.py) in the background, published
to the drift metrics (app/drift_metrics.py) and to GET /models/{model}/drift.

Each version gets its own window when it loads (the registry's ``on_load``), so a swap starts
the new version from an empty window while the old one keeps its own until it is unloaded.
Every STEWARD_DRIFT_INTERVAL_SECONDS, the windows are copied on the event loop and judged in a
worker thread; the request path only appends.

A version saved before profiles had bins has its profile rebuilt once, in that worker thread,
from the rows it was trained on where they are stored (app/training_rows.py); otherwise it
reports ``no_reference`` and serves as ever.
"""

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anyio.to_thread

from app.artifacts import ModelMetadata
from app.drift import reference_profile, usable_profile
from app.drift_metrics import DriftMetrics
from app.drift_report import DataQuality, DriftReport, Reference, idle, judge
from app.drift_window import DriftWindow, Snapshot, capacity
from app.errors import ArtifactError, UnknownVersion
from app.features import Row
from app.loading import LoadedModel, RowOutput
from app.model_entry import ModelEntry
from app.periodic import Periodic
from app.registry import Registry
from app.settings import Settings
from app.training_rows import stored_training_matrix

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Watched:
    """One loaded version's window, reference and latest report."""

    metadata: ModelMetadata
    window: DriftWindow
    reference: Reference
    report: DriftReport | None = None
    rebuilt: bool = False  # a rebuild from stored rows was tried


class DriftMonitor:
    """The drift windows of the loaded versions, and their latest reports."""

    def __init__(self, settings: Settings, metrics: DriftMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root: Path = settings.models_dir
        self._watched: dict[LoadedModel, _Watched] = {}
        self._lock = threading.Lock()  # publishing vs. a version leaving
        self._periodic = Periodic("drift scores", settings.drift_interval_seconds, self.refresh)

    def follow(self, registry: Registry) -> None:
        """Give each loaded version a window (nothing when STEWARD_DRIFT is false)."""
        if self.settings.drift:
            registry.on_load.append(self._loaded)
            registry.on_unload.append(self._unloaded)

    def start(self) -> None:
        if self.settings.drift:
            self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()

    def observe(
        self, model: LoadedModel, rows: Sequence[Row], outputs: Sequence[RowOutput]
    ) -> None:
        """Rows ``model`` answered a client for: into its window (on the event loop)."""
        watched = self._watched.get(model)
        if watched is not None:
            watched.window.append(rows, outputs, time.monotonic())

    async def refresh(self) -> None:
        """Score every window now (the periodic work; tests call it to skip the wait)."""
        since = time.monotonic() - self.settings.drift_window_seconds
        snapshots = [(w, w.window.snapshot(since)) for w in self._watched.values()]
        await anyio.to_thread.run_sync(self._score_all, snapshots)

    def report(self, entry: ModelEntry, version: str | None) -> DriftReport:
        """The latest report of the version ``version`` names (None: production), with the data
        quality counted up to now."""
        state = entry.state
        number = entry.number(version, state)
        refusal = state.refusals.get(number)
        if refusal is not None:
            raise refusal.unavailable()
        if number not in state.versions:
            raise UnknownVersion(
                f"model {entry.name!r} has no such version or alias",
                [{"field": "version", "message": "a version number or an alias of the model"}],
                model=entry.name,
            )
        watched = next(
            (w for m, w in self._watched.items() if m.name == entry.name and m.version == number),
            None,
        )
        if watched is None:
            return self._idle(entry, number)
        report = watched.report
        if report is None:  # loaded since the last round: nothing judged yet
            report = self._judge(watched, Snapshot.empty()).model_copy(
                update={
                    "status": "collecting",
                    "window_rows": min(watched.window.appended, watched.window.size),
                    "reason": "not scored yet: scores are computed every "
                    f"{self.settings.drift_interval_seconds:g} s (STEWARD_DRIFT_INTERVAL_SECONDS)",
                    "computed_at": None,
                }
            )
        counts = watched.window.counts
        features = [
            f.model_copy(update={"quality": DataQuality.of(counts[i])})
            for i, f in enumerate(report.features)
        ]
        return report.model_copy(update={"features": features})

    # --- registry hooks (any thread, under the registry's lock: short) ---------------------

    def _loaded(self, entry: ModelEntry, model: LoadedModel) -> None:
        metadata = model.metadata
        size = capacity(self.settings.drift_window_rows, metadata)
        window = DriftWindow(metadata.features, size, self.metrics.counters(metadata))
        profile = usable_profile(metadata)
        rows = metadata.training_rows or metadata.sample_rows or None
        reference = Reference(profile, "metadata", rows) if profile else Reference(None)
        watched = _Watched(metadata, window, reference)
        self._watched = {**self._watched, model: watched}  # replaced: readers take it whole

    def _unloaded(self, entry: ModelEntry, model: LoadedModel) -> None:
        with self._lock:
            self._watched = {m: w for m, w in self._watched.items() if m is not model}
            self.metrics.forget(model.name, model.version)

    # --- scoring (a worker thread) ---------------------------------------------------------

    def _score_all(self, snapshots: list[tuple[_Watched, Snapshot]]) -> None:
        for watched, snapshot in snapshots:
            try:
                if watched.reference.profile is None and not watched.rebuilt:
                    self._rebuild(watched)
                report = self._judge(watched, snapshot)
            except Exception:  # one version's failure must not stop the others' scores
                logger.exception(
                    "drift scores of %s v%d failed", watched.metadata.name, watched.metadata.version
                )
                continue
            with self._lock:
                if watched not in self._watched.values():  # unloaded meanwhile
                    continue
                watched.report = report
                self.metrics.publish(report)

    def _rebuild(self, watched: _Watched) -> None:
        """A profile from the rows the version was trained on, where they are stored (tried
        once: a version's folder never changes)."""
        watched.rebuilt = True
        metadata = watched.metadata
        problem = "its metadata has no usable reference profile"
        if metadata.reference_profile:
            problem = "its reference profile predates drift scores"
        try:
            matrix, source = stored_training_matrix(self.root, metadata)
            profile = reference_profile(matrix, metadata.features)
        except Exception as exc:  # ArtifactError says why; anything else is reported too
            watched.reference = replace(
                watched.reference, reason=f"{problem}, and it cannot be rebuilt: {exc}"
            )
            return
        watched.reference = Reference(profile, source, len(matrix))
        logger.info(
            "%s v%d: reference profile rebuilt from its %s (%s)",
            metadata.name,
            metadata.version,
            source.replace("_", " "),
            problem,
        )

    def _judge(self, watched: _Watched, snapshot: Snapshot) -> DriftReport:
        window = watched.window
        return judge(
            watched.metadata, watched.reference, snapshot, window.counts, window.size, self.settings
        )

    def _idle(self, entry: ModelEntry, number: int) -> DriftReport:
        """A version with no window here: drift is off, or it is not loaded (it has served
        nothing to score)."""
        settings = self.settings
        try:
            size = capacity(settings.drift_window_rows, entry.metadata(number))
        except ArtifactError:  # loading it would refuse it: said when it is asked to serve
            size = settings.drift_window_rows
        if not settings.drift:
            reason = "STEWARD_DRIFT is false: served inputs are not watched"
            return idle(entry.name, number, "off", reason, size, settings)
        reason = f"v{number} is not loaded in this server: it has served nothing here"
        return idle(entry.name, number, "collecting", reason, size, settings)
