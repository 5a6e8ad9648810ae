"""/docs renders in a real browser, offline, and /openapi.json documents every model's fields."""

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pandas as pd
import pytest
from chromium import Page, headless_page
from fastapi.testclient import TestClient
from helpers import wait_until
from prometheus_client import CollectorRegistry
from server import STEWARD, free_port, serving
from sklearn.linear_model import LogisticRegression

from app.artifacts import DataSource, TrainingData
from app.metrics import Metrics
from app.settings import Settings
from app.training import fit_and_save

REF = "#/components/schemas/"
DEMO_MODELS = {"iris", "breast-cancer", "diabetes"}
# Two models whose names differ only in punctuation: their class names collide (ChurnGb...).
CHURN_FEATURES = {
    "churn-gb": ["tenure_months", "monthly_fee"],
    "churn.gb": ["visits_per_week", "support_calls", "discount_pct"],
}


@pytest.fixture
def models_dir(models_dir: Path) -> Path:
    """The demo models, and churn-gb and churn.gb, each trained on its own columns."""
    rng = np.random.default_rng(0)
    for name, columns in CHURN_FEATURES.items():
        frame = pd.DataFrame(rng.uniform(0, 10, size=(40, len(columns))), columns=columns)
        labels = pd.Series(np.where(frame[columns[0]] > 5, "churned", "stayed"))
        fit_and_save(
            models_dir,
            name,
            "classification",
            frame,
            labels,
            LogisticRegression(),
            promote=True,
            description=f"Churn from {', '.join(columns)}.",
            data=TrainingData(sources=[DataSource(kind="csv", name=f"{name}.csv", rows=40)]),
        )
    return models_dir


@pytest.fixture
def server(models_dir: Path, tmp_path: Path) -> Iterator[str]:
    """A real `steward serve` process serving these models; yields its base URL."""
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=tmp_path / "server.log", ready="/readyz") as served:
        yield served.url


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def request_schema(schema: dict[str, Any], model: str) -> str:
    """The component name of the request body of ``POST /predict/<model>``."""
    body = schema["paths"][f"/predict/{model}"]["post"]["requestBody"]
    ref: str = body["content"]["application/json"]["schema"]["$ref"]
    return ref.removeprefix(REF)


def instance_schema(schema: dict[str, Any], model: str) -> str:
    """The component name of one instance (row) in ``model``'s request body."""
    request = schema["components"]["schemas"][request_schema(schema, model)]
    ref: str = request["properties"]["instances"]["items"]["$ref"]
    return ref.removeprefix(REF)


def served_features(http: httpx2.Client) -> dict[str, list[str]]:
    """Each served model's feature names, from GET /models/{model} (its serving version)."""
    features = {}
    for summary in http.get("/models").json():
        if summary["serving"] is not None:
            detail = http.get(f"/models/{summary['name']}").json()
            (metadata,) = [v for v in detail["versions"] if v["version"] == summary["serving"]]
            features[summary["name"]] = [f["name"] for f in metadata["features"]]
    return features


def test_docs_use_only_local_assets(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    html = response.text
    assert not re.findall(r"https?://", html)
    assets = re.findall(r"""(?:src|href)=["']?(/[^"' >]+)""", html)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert "/openapi.json" in html


def test_openapi_documents_each_served_model(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/predict/{model}", "/predict", "/feedback", "/models", "/readyz"} <= set(paths)
    components = schema["components"]["schemas"]
    for name in DEMO_MODELS | set(CHURN_FEATURES):
        operation = paths[f"/predict/{name}"]["post"]
        assert operation["tags"] == ["predict"], name
        assert "200" in operation["responses"]
        assert request_schema(schema, name).startswith(f"{name}.")
        assert instance_schema(schema, name).startswith(f"{name}.")
    iris = components[instance_schema(schema, "iris")]
    assert list(iris["properties"]) == [
        "sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm",
    ]  # fmt: skip
    assert len(components[instance_schema(schema, "breast-cancer")]["properties"]) == 30
    assert "FeedbackRequest" in components


def test_openapi_refs_resolve_and_every_schema_is_used(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for ref in refs(schema):
        assert ref.startswith(REF), ref
        assert ref.removeprefix(REF) in components, ref
    used: set[str] = set()
    pending = [ref.removeprefix(REF) for ref in refs(schema["paths"])]
    while pending:
        name = pending.pop()
        if name not in used:
            used.add(name)
            pending += [ref.removeprefix(REF) for ref in refs(components[name])]
    assert sorted(set(components) - used) == []
    # Validation errors are documented in the one error shape that the handlers render.
    assert set(refs(schema["paths"]["/models/{model}"])) == {
        REF + "ModelReport",
        REF + "ErrorResponse",
    }


def test_models_whose_names_differ_in_punctuation_get_their_own_schemas(
    client: TestClient,
) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert request_schema(schema, "churn-gb") != request_schema(schema, "churn.gb")
    assert instance_schema(schema, "churn-gb") != instance_schema(schema, "churn.gb")
    for name, features in CHURN_FEATURES.items():
        assert list(components[instance_schema(schema, name)]["properties"]) == features, name


# Swagger UI has drawn the operations, or an error box, or its "Unable to render" notice.
SETTLED = "document.querySelector('.opblock, .errors-wrapper, .version-pragma') !== null"
# Presses "Expand all" once on each named schema of the Schemas section; returns, per name, the
# titles shown in that schema (its name, its properties' names), or null if no schema has it.
EXPAND_SCHEMAS = """(names) => Object.fromEntries(names.map((name) => {
  const article = [...document.querySelectorAll('.models article[data-json-schema-level="0"]')]
    .find((a) => a.querySelector('.json-schema-2020-12__title')?.textContent === name);
  if (!article) return [name, null];
  const button = article.querySelector(':scope > div > .json-schema-2020-12-expand-deep-button');
  if (button?.textContent === 'Expand all') button.click();
  const titles = article.querySelectorAll('.json-schema-2020-12__title');
  return [name, [...titles].map((title) => title.textContent)];
}))"""


def expand_schemas(page: Page, names: list[str]) -> dict[str, list[str] | None]:
    shown: dict[str, list[str] | None] = page.evaluate(f"({EXPAND_SCHEMAS})({json.dumps(names)})")
    return shown


def test_docs_render_every_model_in_chromium(server: str, tmp_path: Path) -> None:
    with httpx2.Client(base_url=server, timeout=10) as http:
        schema = http.get("/openapi.json").json()
        features = served_features(http)
    assert set(features) == DEMO_MODELS | set(CHURN_FEATURES)
    operations = sum(len(methods) for methods in schema["paths"].values())
    requests = {name: request_schema(schema, name) for name in features}
    with headless_page(tmp_path / "chromium", tmp_path / "chromium.log") as page:
        page.open(f"{server}/docs")
        assert wait_until(lambda: page.evaluate(SETTLED), seconds=30), "/docs drew nothing"
        text = page.evaluate("document.body.innerText")
        assert "Unable to render this definition" not in text
        assert page.evaluate("document.querySelectorAll('.errors-wrapper').length") == 0, text
        assert page.evaluate("document.querySelectorAll('.opblock').length") == operations, text

        def all_shown() -> bool:
            shown = expand_schemas(page, list(requests.values()))
            return all(set(features[n]) <= set(shown[c] or ()) for n, c in requests.items())

        wait_until(all_shown, seconds=30)  # the assertions below say what is missing
        shown = expand_schemas(page, list(requests.values()))
    for name, component in requests.items():
        titles = shown[component]
        assert titles is not None, f"{component} is not among the schemas on /docs"
        assert set(features[name]) <= set(titles), f"{name}: {features[name]} not in {titles}"
        others = {f for model, own in features.items() if model != name for f in own}
        assert not (others - set(features[name])) & set(titles), f"{name} shows others' fields"


DOCS = Path(__file__).parent.parent / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "operations.md").read_text()
    for name in Settings.model_fields:
        assert f"STEWARD_{name.upper()}" in text, name


def test_every_metric_is_documented() -> None:
    text = (DOCS / "metrics.md").read_text()
    metrics = Metrics(CollectorRegistry())
    for family in metrics.registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        assert f"`{family.name}{suffix}`" in text, family.name
