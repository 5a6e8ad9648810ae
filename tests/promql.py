"""The PromQL the project ships: docs/metrics.md, the Grafana dashboard and the alert rules."""

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from app.metrics import Metrics

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "steward.json"
ALERTS = ROOT / "prometheus" / "alerts.yml"
DOCS = ROOT / "docs"

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def docs_expressions() -> list[str]:
    """Every expression in docs/metrics.md: a ```promql block, or one per line where commented."""
    expressions = []
    for block in re.findall(r"```promql\n(.*?)```", (DOCS / "metrics.md").read_text(), re.S):
        if "#" in block:
            lines = (line.split("#")[0].strip() for line in block.splitlines())
            expressions += [line for line in lines if line]
        else:
            expressions.append(block.strip())
    return expressions


SHADOW_ACCURACY = 'steward_shadow_feedback_total{outcome="correct"}'
"""What tells docs/metrics.md's champion-vs-challenger (shadow) accuracy expression apart."""


DRIFT_GAUGES = {
    "steward_feature_drift_psi": "max",
    "steward_feature_drift_ks": "max",
    "steward_model_drift_status": "max",
    "steward_estimated_accuracy": "min|avg",
}
"""The drift gauges each instance sets over the rows it served, and how an expression reads them
across instances (docs/metrics.md, Input drift). ``steward_drift_window_rows`` is read per
instance."""

DRIFT_METRICS = {*DRIFT_GAUGES, "steward_data_quality_total", "steward_drift_window_rows"}
"""Every sample name of the drift metrics."""


def docs_section_expression(heading: str) -> str:
    """The one ```promql block of docs/metrics.md under the heading that starts with
    ``heading`` (``### Accuracy on feedback``), before the next heading."""
    text = (DOCS / "metrics.md").read_text()
    (section,) = re.findall(rf"^{re.escape(heading)}.*?\n(.*?)(?=^#|\Z)", text, re.S | re.M)
    (block,) = re.findall(r"```promql\n(.*?)```", section, re.S)
    return str(block).strip()


def docs_expression(containing: str) -> str:
    """The one expression of docs/metrics.md that contains ``containing``."""
    (expression,) = [e for e in docs_expressions() if containing in e]
    return expression


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def with_all_models(expr: str) -> str:
    """A dashboard expression as Grafana sends it with every model and version selected."""
    return expr.replace("$model", ".*").replace("$version", ".*")


def without_dashboard_filters(expr: str) -> str:
    """Strip the dashboard's variable filters and all white space, to compare with the docs."""
    for matcher in (r'model=~"\$model"', r'version=~"\$version"'):
        expr = re.sub(matcher + r",\s*", "", expr)
        expr = re.sub(r",?\s*" + matcher, "", expr)
    return re.sub(r"\s+", "", expr.replace("{}", ""))


def defined_metric_names() -> set[str]:
    """Every sample name app/metrics.py can expose, plus Prometheus' own ``up``."""
    names = {"up"}
    for family in Metrics(CollectorRegistry()).registry.collect():
        base = family.name
        names |= {base + suffix for suffix in SUFFIXES[family.type]}
    return names


def used_metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(steward_[a-z0-9_]+|up)\b(?=\s*[{\[)]|\s*$|\s*[=<>!])", expr))


def expressions_using(expressions: list[str], metric: str) -> list[str]:
    """The expressions that read ``metric``."""
    return [e for e in expressions if metric in used_metric_names(e)]
