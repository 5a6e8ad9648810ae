"""GET /healthz, GET /readyz and GET /metrics: what probes and Prometheus read."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.errors import NotReady, StoreUnavailable
from app.routes.deps import LogDep, MetricsDep, RegistryDep, StoreDep
from app.schemas import ErrorResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
def readyz(registry: RegistryDep, store: StoreDep, log: LogDep) -> dict[str, Any]:
    """Readiness: every production model loaded and the store takes writes; else 503 and why."""
    reasons = [
        {"component": f"model:{r.model}", "reason": r.reason, "message": r.message}
        for r in registry.refusals.values()
    ]
    if log.last_error is not None:
        reasons.append(
            {"component": "store", "reason": "log_write_failing", "message": log.last_error}
        )
    try:
        store.check_writable()
    except StoreUnavailable as exc:
        reasons.append({"component": "store", "reason": "not_writable", "message": exc.message})
    if reasons:
        raise NotReady("not ready: " + "; ".join(r["component"] for r in reasons), reasons)
    serving = {
        name: registry.aliases(name)["production"]
        for name in registry.names
        if "production" in registry.aliases(name)
    }
    return {"status": "ready", "models": serving, "pending_log_rows": log.pending}


@router.get("/metrics", response_class=Response)
def metrics(collectors: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(collectors.registry), media_type=CONTENT_TYPE_LATEST)
