"""The prediction log: a store interface, its SQL implementation, and the batching writer."""

from app.store.base import (
    Label,
    LabelledRow,
    PairedCounts,
    PredictionRecord,
    PredictionStore,
    QuarantinedPrediction,
    RowsRefused,
    StoredPrediction,
    StoredShadow,
    VersionCounts,
)
from app.store.log import PredictionLog
from app.store.pool import PoolOptions
from app.store.sql import SqlStore, open_configured_store, open_store

__all__ = [
    "Label",
    "LabelledRow",
    "PairedCounts",
    "PoolOptions",
    "PredictionLog",
    "PredictionRecord",
    "PredictionStore",
    "QuarantinedPrediction",
    "RowsRefused",
    "SqlStore",
    "StoredPrediction",
    "StoredShadow",
    "VersionCounts",
    "open_configured_store",
    "open_store",
]
