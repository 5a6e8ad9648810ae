"""Readiness: whether this instance should get traffic now, and what is degraded.

Ready while the store takes writes and at least one model serves. A model whose production
version was refused at load does not make the instance unready while others serve: it is listed
as degraded. Models named in ``STEWARD_REQUIRED_MODELS`` must serve, or the instance is not
ready. One row the store refuses is quarantined by the log and never makes it unready; the log
reports ``last_error`` only while the store itself fails.
"""

from collections.abc import Collection
from typing import Literal

from pydantic import BaseModel

from app.errors import NotReady, StoreUnavailable
from app.registry import Registry
from app.store import PredictionLog, PredictionStore


class ReadinessProblem(BaseModel):
    """Something not ready or degraded: ``model:<name>``, ``models`` or ``store``, and why."""

    component: str
    reason: str
    message: str


class ReadinessReport(BaseModel):
    """An instance that takes traffic. ``status`` is "degraded" when a model is refused."""

    status: Literal["ready", "degraded"]
    models: dict[str, int]  # the serving models and their production versions
    degraded: list[ReadinessProblem]
    pending_log_rows: int


class Readiness:
    def __init__(
        self,
        registry: Registry,
        store: PredictionStore,
        log: PredictionLog,
        required_models: Collection[str] = (),
    ) -> None:
        self.registry = registry
        self.store = store
        self.log = log
        self.required_models = list(dict.fromkeys(required_models))

    def check(self) -> ReadinessReport:
        """The report of a ready instance; NotReady (503) naming each blocking problem."""
        serving = {name: model.version for name, model in self.registry.production().items()}
        refused = self._refused_models()
        blocking = self._store_problems()
        for name in self.required_models:
            if name not in serving:
                problem = refused.pop(name) if name in refused else self._absent(name)
                blocking.append(problem)
        if not serving:
            blocking.append(
                ReadinessProblem(
                    component="models",
                    reason="none_serving",
                    message="no model serves: the registry has none with a loadable production "
                    "version",
                )
            )
        degraded = list(refused.values())
        if blocking:
            raise NotReady(
                "not ready: " + "; ".join(p.component for p in blocking),
                [p.model_dump() for p in blocking + degraded],
            )
        return ReadinessReport(
            status="degraded" if degraded else "ready",
            models=serving,
            degraded=degraded,
            pending_log_rows=self.log.pending,
        )

    def _refused_models(self) -> dict[str, ReadinessProblem]:
        """Models whose production version (or aliases file) was refused, by name."""
        return {
            name: ReadinessProblem(
                component=f"model:{name}", reason=refusal.reason, message=refusal.message
            )
            for name, refusal in self.registry.refused().items()
        }

    def _store_problems(self) -> list[ReadinessProblem]:
        problems = []
        if self.log.last_error is not None:
            problems.append(
                ReadinessProblem(
                    component="store", reason="log_write_failing", message=self.log.last_error
                )
            )
        try:
            self.store.check_writable()
        except StoreUnavailable as exc:
            problems.append(
                ReadinessProblem(component="store", reason="not_writable", message=exc.message)
            )
        return problems

    def _absent(self, name: str) -> ReadinessProblem:
        if name in self.registry.names:
            reason, message = (
                "no_production_version",
                f"required model {name} has no production version",
            )
        else:
            reason, message = "absent", f"required model {name} is not in the registry"
        return ReadinessProblem(component=f"model:{name}", reason=reason, message=message)
