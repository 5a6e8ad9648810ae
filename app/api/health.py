"""GET /healthz, GET /readyz and GET /metrics: what probes and Prometheus read."""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app import multiprocess_metrics
from app.api.deps import MetricsDep, ReadinessDep
from app.readiness import ReadinessReport
from app.schemas import ErrorResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
def readyz(readiness: ReadinessDep) -> ReadinessReport:
    """Readiness: the store takes writes and a model serves (refused ones listed as degraded)."""
    return readiness.check()


@router.get("/metrics", response_class=Response)
def metrics(collectors: MetricsDep) -> Response:
    """Prometheus text format (under several workers: every worker's counts)."""
    return Response(
        multiprocess_metrics.exposition(collectors.registry), media_type=CONTENT_TYPE_LATEST
    )
