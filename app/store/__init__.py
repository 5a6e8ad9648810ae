"""The prediction log: a store interface, its SQL implementation, and the batching writer."""

from app.store.base import (
    Label,
    PredictionRecord,
    PredictionStore,
    QuarantinedPrediction,
    RowsRefused,
    StoredPrediction,
    VersionCounts,
)
from app.store.log import PredictionLog
from app.store.sql import SqlStore, open_store

__all__ = [
    "Label",
    "PredictionLog",
    "PredictionRecord",
    "PredictionStore",
    "QuarantinedPrediction",
    "RowsRefused",
    "SqlStore",
    "StoredPrediction",
    "VersionCounts",
    "open_store",
]
