"""The Grafana dashboard, alert rules and provisioning, checked without running them.

(test_prometheus.py runs every expression against a real Prometheus.)
"""

import re
from pathlib import Path

import pytest
import yaml
from promql import (
    DOCS,
    ROOT,
    alert_rules,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    defined_metric_names,
    docs_expressions,
    used_metric_names,
    without_dashboard_filters,
)


def test_dashboard_uses_only_defined_metrics() -> None:
    defined = defined_metric_names()
    for expr in dashboard_expressions() + docs_expressions():
        used = used_metric_names(expr)
        assert used, expr
        assert used <= defined, (expr, used - defined)


def test_dashboard_expressions_are_the_documented_ones() -> None:
    documented = {without_dashboard_filters(e) for e in docs_expressions()}
    for expr in dashboard_expressions():
        assert without_dashboard_filters(expr) in documented, expr


def test_dashboard_filters_by_its_model_and_version_variables() -> None:
    for expr in dashboard_expressions():
        if used_metric_names(expr) & {"steward_predictions_total", "steward_feedback_total"}:
            assert 'model=~"$model"' in expr, expr
            assert 'version=~"$version"' in expr, expr


def test_dashboard_shape() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["query"]["query"] == "label_values(steward_model_info, model)"
    assert "$model" in variables["version"]["query"]["query"]
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Errors", "Model quality", "Models"]
    for panel in dashboard_panels():
        assert panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
    titles = " ".join(p["title"] for p in dashboard_panels())
    for needed in ("Requests/s", "Predictions/s", "p99", "inference", "error ratio", "Errors/s",
                   "Accuracy", "Precision", "Recall", "F1", "MAE", "RMSE", "coverage",
                   "class distribution", "versions and aliases", "refused"):  # fmt: skip
        assert needed in titles, needed
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def _anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


REQUIRED_ALERTS = {
    "StewardTargetDown",
    "StewardHighErrorRatio",
    "StewardHighLatency",
    "StewardAccuracyBelowFloor",
    "StewardAccuracyDrop",
    "StewardNoFeedback",
    "StewardModelRefused",
    "StewardAutomaticRollback",
}


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert names >= REQUIRED_ALERTS
    anchors = _anchors((DOCS / "operations.md").read_text())
    defined = defined_metric_names()
    tested = (ROOT / "prometheus" / "alerts_test.yml").read_text()
    for rule in rules:
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        page, anchor = annotations["runbook_url"].split("#")
        assert page == "docs/operations.md"
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/operations.md"
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert used_metric_names(rule["expr"]) <= defined, rule["alert"]
        assert f"alertname: {rule['alert']}" in tested, f"no promtool test for {rule['alert']}"
        if "model" in rule["expr"] and "version" in rule["expr"]:
            assert "$labels.model" in annotations["description"], rule["alert"]
            assert "$labels.version" in annotations["description"], rule["alert"]


def test_prometheus_config_loads_the_rules() -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (ROOT / "prometheus" / rule_file).is_file()
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"prometheus", "steward"}


@pytest.mark.parametrize("path", sorted((ROOT / "grafana" / "provisioning").rglob("*.yml")))
def test_provisioning_files_are_valid(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert document["apiVersion"] == 1
    assert document.get("datasources") or document.get("providers")
