"""POST /feedback: ground truth for logged predictions."""

from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import FeedbackDep
from app.schemas import ErrorResponse, FeedbackBatchResponse, FeedbackResult

router = APIRouter(tags=["feedback"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not JSON."},
    404: {"model": ErrorResponse, "description": "Unknown prediction id (single item)."},
    409: {"model": ErrorResponse, "description": "Already labelled with another ground truth."},
    413: {"model": ErrorResponse, "description": "The body is over the size limit."},
    422: {
        "model": ErrorResponse,
        "description": "A malformed prediction id, or a ground truth this model cannot have: "
        "not one of its classes, or a number outside its ground-truth range.",
    },
    503: {"model": ErrorResponse, "description": "The prediction store is down."},
}
# The schema itself is added to the OpenAPI components by api/docs.py.
BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}
        },
    }
}


@router.post("/feedback", responses=RESPONSES, openapi_extra=BODY_DOC)
async def feedback(
    request: Request, recorder: FeedbackDep
) -> FeedbackResult | FeedbackBatchResponse:
    """Record ground truth: one item, or a batch (``items``) with a result per item."""
    return await recorder.receive(await request.body())
