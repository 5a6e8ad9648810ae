"""/docs works offline and /openapi.json documents every model's exact fields."""

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from app.settings import Settings


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


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
    for name, title in [
        ("iris", "Iris"),
        ("breast-cancer", "BreastCancer"),
        ("diabetes", "Diabetes"),
    ]:
        operation = paths[f"/predict/{name}"]["post"]
        body_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body_ref == f"#/components/schemas/{title}PredictRequest"
        assert "200" in operation["responses"]
    iris = components["IrisInstance"]
    assert list(iris["properties"]) == [
        "sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm",
    ]  # fmt: skip
    assert len(components["BreastCancerInstance"]["properties"]) == 30
    assert "FeedbackRequest" in components
    for ref in refs(schema):
        assert ref.removeprefix("#/components/schemas/") in components, ref


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
