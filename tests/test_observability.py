"""The Grafana dashboard, alert rules and provisioning, checked without running them.

(test_prometheus.py runs every expression against a real Prometheus.)
"""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql import (
    DOCS,
    DRIFT_GAUGES,
    DRIFT_METRICS,
    ROOT,
    alert_rules,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    defined_metric_names,
    docs_expressions,
    expressions_using,
    used_metric_names,
    without_dashboard_filters,
)

from app.settings import Settings


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
    per_version = {"steward_predictions_total", "steward_feedback_total"} | DRIFT_METRICS
    for expr in dashboard_expressions():
        if used_metric_names(expr) & per_version:
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
    assert rows == ["Traffic", "Latency", "Errors", "Model quality", "Input drift", "Models"]
    for panel in dashboard_panels():
        assert panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
    titles = " ".join(p["title"] for p in dashboard_panels())
    for needed in ("Requests/s", "Predictions/s", "p99", "inference", "error ratio", "Errors/s",
                   "Accuracy", "Precision", "Recall", "F1", "MAE", "RMSE", "coverage",
                   "class distribution", "versions and aliases", "refused", "PSI", "KS",
                   "Data-quality", "drift status", "Estimated vs realised"):  # fmt: skip
        assert needed in titles, needed
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_drift_is_read_across_instances_as_documented() -> None:
    """Each instance judges drift over the rows it served: every shipped expression reads its
    gauges across instances (the worst: max of scores and status, min or avg of the estimated
    accuracy) and adds its data-quality counters up (docs/metrics.md, Input drift)."""
    shipped = dashboard_expressions() + docs_expressions() + [r["expr"] for r in alert_rules()]
    for metric, readings in DRIFT_GAUGES.items():
        for expr in expressions_using(shipped, metric):
            assert re.search(rf"\b({readings}) by \([^)]*\) \({metric}\b", expr), expr
    quality = expressions_using(shipped, "steward_data_quality_total")
    assert quality
    for expr in quality:
        assert re.search(r"\bsum by \([^)]*\) \(rate\(steward_data_quality_total\b", expr), expr
    used = {m for e in dashboard_expressions() for m in used_metric_names(e)}
    assert used >= DRIFT_METRICS, DRIFT_METRICS - used


def _panel(title: str) -> dict[str, Any]:
    (panel,) = [p for p in dashboard_panels() if title in p["title"]]
    return panel


def test_drift_panels_draw_the_thresholds_and_status_values() -> None:
    steps = _panel("PSI")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    fields = Settings.model_fields
    assert [s["value"] for s in steps] == [
        None, fields["drift_psi_warn"].default, fields["drift_psi_drift"].default,
    ]  # fmt: skip
    assert [s["color"] for s in steps] == ["green", "yellow", "red"]
    (mapping,) = _panel("drift status")["fieldConfig"]["defaults"]["mappings"]
    shown = {value: option["text"] for value, option in mapping["options"].items()}
    assert shown == {"-1": "not judged", "0": "ok", "1": "warn", "2": "drift"}
    accuracy = _panel("Estimated vs realised")
    used = [used_metric_names(t["expr"]) for t in accuracy["targets"]]
    assert used == [{"steward_estimated_accuracy"}, {"steward_feedback_total"}]
    realised = without_dashboard_filters(accuracy["targets"][1]["expr"])
    assert realised == without_dashboard_filters(
        _panel("Accuracy on feedback")["targets"][0]["expr"]
    )


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
    "StewardInputDrift",
    "StewardEstimatedAccuracyLow",
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


def _rule(name: str) -> dict[str, Any]:
    (rule,) = [r for r in alert_rules() if r["alert"] == name]
    return rule


def test_estimated_accuracy_alert_has_the_realised_accuracy_floor() -> None:
    """One floor for both accuracies: docs/operations.md says to change them together."""
    floors = [
        re.findall(r"\) < ([0-9.]+)", _rule(name)["expr"])
        for name in ("StewardAccuracyBelowFloor", "StewardEstimatedAccuracyLow")
    ]
    assert floors[0] == floors[1] == ["0.8"]
    for name in ("StewardInputDrift", "StewardEstimatedAccuracyLow"):
        assert _rule(name)["for"] == "30m", name


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
