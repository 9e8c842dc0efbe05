"""Static checks of the monitoring files: the Prometheus config and rules, and the Grafana provisioning and dashboard.

No broker and no Prometheus server: the files are checked with `promtool` (Debian package `prometheus`), and the
metric names in their PromQL against the worker's and the producer's own metrics (tests/deploy_expressions.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy_expressions import (
    DASHBOARD,
    GRAFANA_DATASOURCES,
    GRAFANA_SUBSTITUTES,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    REPO_ROOT,
    RULES,
    RULES_DIR,
    dashboard_expressions,
    dashboard_panels,
    metric_names,
    producer_series_names,
    read_yaml,
    recorded_names,
    render_local_config,
    rule_expressions,
    substitute_grafana_variables,
    worker_series_names,
)

RULES_TEST = RULES_DIR / "inspector.rules.test.yml"
LATENCY_BUDGET_S = 0.3  # frames' deadline after capture (the producer's default deadline_ms)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool not installed (Debian package `prometheus`)")


def promtool(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --- Prometheus ----------------------------------------------------------------------------------------


def test_compose_config_discovers_every_inspector_replica() -> None:
    config = read_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["inspector"]["dns_sd_configs"] == [
        {"names": ["inspector"], "type": "A", "port": 9400, "refresh_interval": "15s"}]
    assert jobs["producer"]["dns_sd_configs"] == [
        {"names": ["producer"], "type": "A", "port": 9401, "refresh_interval": "15s"}]
    # The rule glob picks the rules and not their unit tests.
    assert [path for rule_glob in config["rule_files"] for path in PROMETHEUS_DIR.glob(rule_glob)] == [RULES]


@needs_promtool
def test_compose_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@needs_promtool
def test_local_config_template_renders_to_valid_config(tmp_path: Path) -> None:
    rendered = render_local_config("127.0.0.1:9400", producer_targets=("127.0.0.1:9401",))
    assert "{{" not in rendered
    config = yaml.safe_load(rendered)
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
    assert config["scrape_configs"] == [
        {"job_name": "inspector", "static_configs": [{"targets": ["127.0.0.1:9400"]}]},
        {"job_name": "producer", "static_configs": [{"targets": ["127.0.0.1:9401"]}]}]
    assert yaml.safe_load(render_local_config("127.0.0.1:9400"))["scrape_configs"][1]["static_configs"] == [
        {"targets": []}]
    path = tmp_path / "prometheus.yml"
    path.write_text(rendered)
    result = promtool("check", "config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@needs_promtool
def test_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for group in read_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule}
    cases = [case for test in read_yaml(RULES_TEST)["tests"] for case in test.get("alert_rule_test", [])]
    for alert in sorted(alerts):
        outcomes = {bool(case.get("exp_alerts")) for case in cases if case["alertname"] == alert}
        assert outcomes == {True, False}, f"{alert}: needs a test where it fires and one where it does not"


def test_every_alert_has_severity_and_annotations() -> None:
    for group in read_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, rule["alert"]
            annotations = rule.get("annotations", {})
            assert annotations.get("summary") and annotations.get("description"), rule["alert"]


# --- Grafana -------------------------------------------------------------------------------------------


def provisioned_datasource_uid() -> str:
    (datasource,) = read_yaml(GRAFANA_DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    return str(datasource["uid"])


def test_dashboard_panels_have_queries_on_the_provisioned_datasource() -> None:
    uid = provisioned_datasource_uid()
    panels = dashboard_panels(DASHBOARD)
    assert panels
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        targets = [t for t in panel.get("targets", []) if t.get("expr", "").strip()]
        assert targets, f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == uid, panel["title"]


def test_dashboard_uses_only_substitutable_variables() -> None:
    for expr in dashboard_expressions(DASHBOARD):
        assert "$" not in substitute_grafana_variables(expr), expr
        assert expr.count("$camera") == expr.count('camera=~"$camera"'), expr
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    assert {f"${v['name']}" for v in variables} <= set(GRAFANA_SUBSTITUTES)


def test_latency_panel_marks_the_deadline() -> None:
    (panel,) = [p for p in dashboard_panels(DASHBOARD)
                if any("inspector_end_to_end_latency_seconds_bucket" in t["expr"] for t in p["targets"])]
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "s"
    assert LATENCY_BUDGET_S in [step["value"] for step in defaults["thresholds"]["steps"]]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"


def test_metric_names_finds_selectors_only() -> None:
    expr = ('sum by (camera, le) (rate(inspector_anomaly_score_bucket{camera=~"$camera"}[$__rate_interval]))'
            ' > on () group_left () 2 * max(inspector_threshold offset 5m) or absent(up{job="inspector"})'
            ' and 1e3 < bool inf')
    assert metric_names(expr) == {"inspector_anomaly_score_bucket", "inspector_threshold", "up"}


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_expressions_use_only_worker_and_producer_metrics(source: str) -> None:
    allowed = worker_series_names() | producer_series_names() | {"up"}
    if source == "dashboard":
        exprs = dashboard_expressions(DASHBOARD)
    else:
        exprs = rule_expressions(RULES)
        allowed |= recorded_names(RULES)
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= allowed, f"unknown metrics {sorted(names - allowed)} in {expr!r}"
