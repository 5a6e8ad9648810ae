"""The in-run baseline: the route most teams write first, and nothing else.

One sync ``def`` route: a pydantic body, a DataFrame, ``model.predict``. No metrics, no log, no
ids. ``make bench`` runs the same load against it and against Steward, on the same machine in the
same run, so the ratios between them mean something even where the absolute numbers do not.

Serve it with ``uvicorn --factory bench.naive:create_app`` and ``NAIVE_MODELS_DIR`` set to a
Steward registry; it loads each model's production version straight from its joblib file.
"""

import json
import os
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel


class PredictRequest(BaseModel):
    instances: list[dict[str, float]]


def create_app() -> FastAPI:
    root = Path(os.environ["NAIVE_MODELS_DIR"])
    models: dict[str, Any] = {}
    for folder in sorted(p for p in root.iterdir() if (p / "aliases.json").exists()):
        aliases = json.loads((folder / "aliases.json").read_text())
        production = aliases.get("aliases", aliases)["production"]  # either aliases.json format
        models[folder.name] = joblib.load(folder / str(production) / "model.joblib")

    app = FastAPI()

    @app.post("/predict/{model}")
    def predict(model: str, request: PredictRequest) -> dict[str, list[Any]]:
        frame = pd.DataFrame(request.instances)
        return {"predictions": models[model].predict(frame).tolist()}

    return app
