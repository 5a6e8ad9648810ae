"""The in-run baselines: the routes teams write by hand, and nothing else.

Three apps, one route each (``POST /predict/{model}``, a pydantic body of ``instances``), no
metrics, no log, no ids, no batching:

- ``create_numpy_app``: a sync ``def`` route; each instance becomes a NumPy row in the model's
  feature order, ``model.predict`` on the rows. What careful teams write; the baseline of the
  ratios in ``make bench``.
- ``create_async_app``: the same route as ``async def``, calling ``model.predict`` inline on
  the event loop (no thread-pool hop: faster for a lone client, blocks the loop meanwhile).
- ``create_dataframe_app``: the sync route with a pandas DataFrame per request instead of a
  NumPy array (the route the benchmark compared against before).

``make bench`` runs the same load against each of them and against Steward, on the same
machine in the same run, so the ratios between them mean something even where the absolute
numbers do not. Serve one with one uvicorn worker::

    NAIVE_MODELS_DIR=models uvicorn --factory naive:create_numpy_app --app-dir bench

``NAIVE_MODELS_DIR`` is a Steward registry: each model's production version is loaded straight
from its joblib file, its feature order read from the version's ``metadata.json``.
"""

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel


class PredictRequest(BaseModel):
    instances: list[dict[str, float]]


@dataclass(frozen=True)
class Model:
    estimator: Any
    features: list[str]  # the order the estimator takes them in

    def predict_rows(self, instances: list[dict[str, float]]) -> list[Any]:
        """One NumPy row per instance, in feature order; the estimator's predictions."""
        rows = np.array([[row[f] for f in self.features] for row in instances])
        predictions: list[Any] = self.estimator.predict(rows).tolist()
        return predictions


def create_numpy_app() -> FastAPI:
    models = load_models()
    app = FastAPI()

    @app.post("/predict/{model}")
    def predict(model: str, request: PredictRequest) -> dict[str, list[Any]]:
        return {"predictions": models[model].predict_rows(request.instances)}

    return app


def create_async_app() -> FastAPI:
    models = load_models()
    app = FastAPI()

    @app.post("/predict/{model}")
    async def predict(model: str, request: PredictRequest) -> dict[str, list[Any]]:
        return {"predictions": models[model].predict_rows(request.instances)}

    return app


def create_dataframe_app() -> FastAPI:
    models = load_models()
    # The registry's models were fitted on arrays: given a DataFrame, scikit-learn warns about
    # its column names on every call (printed every time, to the server's log). A team would
    # silence it; the filter still runs per call, the printing does not.
    warnings.filterwarnings("ignore", "X has feature names", UserWarning)
    app = FastAPI()

    @app.post("/predict/{model}")
    def predict(model: str, request: PredictRequest) -> dict[str, list[Any]]:
        served = models[model]
        frame = pd.DataFrame(request.instances, columns=served.features)
        return {"predictions": served.estimator.predict(frame).tolist()}

    return app


def load_models() -> dict[str, Model]:
    """Each model's production version in the registry at ``NAIVE_MODELS_DIR``."""
    root = Path(os.environ["NAIVE_MODELS_DIR"])
    models: dict[str, Model] = {}
    for folder in sorted(p for p in root.iterdir() if (p / "aliases.json").exists()):
        aliases = json.loads((folder / "aliases.json").read_text())
        production = aliases.get("aliases", aliases)["production"]  # either aliases.json format
        version = folder / str(production)
        metadata = json.loads((version / "metadata.json").read_text())
        models[folder.name] = Model(
            estimator=joblib.load(version / "model.joblib"),
            features=[f["name"] for f in metadata["features"]],
        )
    return models
