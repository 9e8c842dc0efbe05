"""Static checks of the monitoring files: the Prometheus config and rules, and the Grafana provisioning and dashboard.

No broker and no Prometheus server: the files are checked with `promtool` (Debian package `prometheus`), and the
metric names in their PromQL against the worker's, the producer's and the sorter's own metrics
(tests/deploy_expressions.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.deploy_expressions import (
    DASHBOARD,
    GRAFANA_DATASOURCES,
    GRAFANA_SUBSTITUTES,
    KAFKA_ALERTS,
    KAFKA_ROW,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    REPO_ROOT,
    RULES,
    RULES_DIR,
    SORTER_ROW,
    alert_rules,
    assert_sorter_expressions_have_data,
    dashboard_expressions,
    dashboard_panels,
    dashboard_rows,
    kafka_health_expressions,
    kafka_health_series_names,
    metric_names,
    panel_expressions,
    producer_series_names,
    read_yaml,
    reads_only,
    recorded_names,
    render_local_config,
    rule_expressions,
    sorter_expressions,
    sorter_series_names,
    substitute_grafana_variables,
    with_bool_comparisons,
    worker_series_names,
)

RULES_TEST = RULES_DIR / "inspector.rules.test.yml"
LATENCY_BUDGET_S = 0.3  # frames' deadline after capture (the producer's default deadline_ms)
SORTER_ALERTS = {"EjectionsLate", "ActuatorDown"}

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
    from inspector.settings import SorterSettings

    assert jobs["sorter"]["static_configs"] == [{"targets": [f"sorter:{SorterSettings().port}"]}]
    # The probe runs in the cluster variant only: DNS discovery leaves the single-broker stack without a target.
    assert jobs["kafka-health"]["dns_sd_configs"] == [
        {"names": ["kafka-health"], "type": "A", "port": 9420, "refresh_interval": "15s"}]
    # The rule glob picks the rules and not their unit tests.
    assert [path for rule_glob in config["rule_files"] for path in PROMETHEUS_DIR.glob(rule_glob)] == [RULES]


@needs_promtool
def test_compose_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@needs_promtool
def test_local_config_template_renders_to_valid_config(tmp_path: Path) -> None:
    rendered = render_local_config("127.0.0.1:9400", producer_targets=("127.0.0.1:9401",),
                                   sorter_targets=("127.0.0.1:9410",), kafka_health_targets=("127.0.0.1:9420",))
    assert "{{" not in rendered
    config = yaml.safe_load(rendered)
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
    assert config["scrape_configs"] == [
        {"job_name": "inspector", "static_configs": [{"targets": ["127.0.0.1:9400"]}]},
        {"job_name": "producer", "static_configs": [{"targets": ["127.0.0.1:9401"]}]},
        {"job_name": "sorter", "static_configs": [{"targets": ["127.0.0.1:9410"]}]},
        {"job_name": "kafka-health", "static_configs": [{"targets": ["127.0.0.1:9420"]}]}]
    assert [job["static_configs"] for job in yaml.safe_load(render_local_config("127.0.0.1:9400"))["scrape_configs"]
            ] == [[{"targets": ["127.0.0.1:9400"]}], [{"targets": []}], [{"targets": []}], [{"targets": []}]]
    # A sorter's test needs no worker: "" leaves the inspector job without a target.
    alone = render_local_config("", sorter_targets=("127.0.0.1:9410",))
    assert [job["static_configs"] for job in yaml.safe_load(alone)["scrape_configs"]] == [
        [{"targets": []}], [{"targets": []}], [{"targets": ["127.0.0.1:9410"]}], [{"targets": []}]]
    for name, text in (("prometheus.yml", rendered), ("alone.yml", alone)):
        path = tmp_path / name
        path.write_text(text)
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
        assert expr.count("$lane") == expr.count('lane=~"$lane"'), expr
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
def test_expressions_use_only_worker_producer_sorter_and_kafka_health_metrics(source: str) -> None:
    allowed = (worker_series_names() | producer_series_names() | sorter_series_names() | kafka_health_series_names()
               | {"up"})
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


# --- the sorter ----------------------------------------------------------------------------------------


def test_sorter_series_are_the_sorters_own() -> None:
    names = sorter_series_names()
    assert {"inspector_sorter_ejections_total", "inspector_sorter_actuator_up",
            "inspector_sorter_margin_seconds_bucket"} <= names
    assert all(name.startswith("inspector_sorter_") for name in names)
    assert not names & (worker_series_names() | producer_series_names())


def test_the_sorter_row_alone_reads_the_sorters_metrics() -> None:
    """A worker-scraping test skips what reads only the sorter's series; a panel mixing both would be proven by
    neither, and a sorter panel outside the row would be missed by the row's own checks."""
    sorter = sorter_series_names()
    rows = dashboard_rows(DASHBOARD)
    row = panel_expressions(rows[SORTER_ROW])
    assert row and all(reads_only(expr, sorter) for expr in row), row
    others = [expr for title, panels in rows.items() if title != SORTER_ROW for expr in panel_expressions(panels)]
    assert others and not any(metric_names(expr) & sorter for expr in others)
    assert len(row) + len(others) == len(dashboard_expressions(DASHBOARD))
    # What the brief of the row asks for, each in a panel of its own kind.
    joined = " ".join(row)
    for needle in ('outcome="late"', 'outcome="failed"', "histogram_quantile(0.5, sum by (lane, le) "
                   "(rate(inspector_sorter_margin_seconds_bucket", "histogram_quantile(0.99, sum by (lane, le) "
                   "(rate(inspector_sorter_fire_error_seconds_bucket", "inspector_sorter_decision_seconds_bucket",
                   "inspector_sorter_actuator_up", "sum by (lane, outcome)"):
        assert needle in joined, needle


def test_the_sorter_row_sits_below_the_other_rows() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    (row,) = [p for p in panels if p.get("type") == "row" and p["title"] == SORTER_ROW]
    above = [p for p in panels if p is not row and p not in dashboard_rows(DASHBOARD)[SORTER_ROW]]
    assert row["gridPos"]["y"] >= max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in above)
    cells: set[tuple[int, int]] = set()
    for panel in dashboard_rows(DASHBOARD)[SORTER_ROW]:
        g = panel["gridPos"]
        assert g["y"] > row["gridPos"]["y"] and g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_sorter_alerts_read_only_the_sorters_metrics() -> None:
    sorter = sorter_series_names()
    alerts = alert_rules(RULES)
    assert set(alerts) >= SORTER_ALERTS
    assert {name for name, expr in alerts.items() if metric_names(expr) & sorter} == SORTER_ALERTS
    assert all(reads_only(alerts[name], sorter) for name in SORTER_ALERTS)
    (group,) = [g for g in read_yaml(RULES)["groups"] if {r.get("alert") for r in g["rules"]} & SORTER_ALERTS]
    assert {r["alert"] for r in group["rules"]} == SORTER_ALERTS
    assert group["name"] in read_yaml(RULES_TEST)["group_eval_order"]


def test_sorter_expressions_are_the_row_and_the_sorter_alerts() -> None:
    found = sorter_expressions(sorter_series_names())
    row = panel_expressions(dashboard_rows(DASHBOARD)[SORTER_ROW])
    assert {label for label in found if label.startswith("dashboard: ")} == {f"dashboard: {e}" for e in row}
    assert {label for label in found if label.startswith("alert ")} == {f"alert {a} (bool)" for a in SORTER_ALERTS}
    assert all("$" not in expr for expr in found.values())
    assert found["alert ActuatorDown (bool)"] == "inspector_sorter_actuator_up == bool 0"


def test_bool_comparisons_keep_matchers_and_strings() -> None:
    assert with_bool_comparisons('up{job!="x"} == 0 or absent(up{a=~">"})') == \
        'up{job!="x"} == bool 0 or absent(up{a=~">"})'
    assert with_bool_comparisons("a > on () group_left () (2 * b) and c >= bool 1") == \
        "a > bool on () group_left () (2 * b) and c >= bool 1"


class _FakePrometheus(BaseHTTPRequestHandler):
    """/api/v1/query answering one series of value `answers(expr)` ("" for an empty result)."""

    answers: dict[str, str] = {}

    def do_GET(self) -> None:
        expr = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
        value = self.answers.get(expr, "1")
        result = [{"metric": {"lane": "lane-1"}, "value": [0, value]}] if value else []
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture()
def fake_prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    _FakePrometheus.answers = {}


def test_sorter_live_proof_passes_on_data_and_names_what_is_missing(fake_prometheus: str) -> None:
    names = sorter_series_names()
    assert_sorter_expressions_have_data(fake_prometheus, names, timeout_s=0)
    found = sorter_expressions(names)
    empty, nan = found["alert ActuatorDown (bool)"], next(e for e in found.values() if "margin" in e)
    _FakePrometheus.answers = {empty: "", nan: "NaN"}
    with pytest.raises(AssertionError) as failed:
        assert_sorter_expressions_have_data(fake_prometheus, names, timeout_s=0)
    lines = str(failed.value).splitlines()[1:]
    assert len(lines) == 2
    assert any(line.startswith("dashboard: ") and "-> NaN for [{'lane': 'lane-1'}]" in line for line in lines)
    assert "alert ActuatorDown (bool) -> no data" in lines
    # Names that leave out part of the row: the row is not proven, and the helper says so.
    with pytest.raises(AssertionError, match="not in sorter_names"):
        assert_sorter_expressions_have_data(fake_prometheus, names - {"inspector_sorter_actuator_up"}, timeout_s=0)


# --- the Kafka cluster -----------------------------------------------------------------------------------


def test_the_kafka_cluster_row_and_alerts_alone_read_the_probes_metrics() -> None:
    """The probe's series are read by the Kafka cluster row and the Kafka alerts only: those are what a test with a
    live probe proves (kafka_health_expressions), and what a stack without one leaves out."""
    probe = kafka_health_series_names()
    assert {"inspector_kafka_up", "inspector_kafka_brokers", "inspector_kafka_under_replicated_partitions",
            "inspector_kafka_offline_partitions", "inspector_kafka_under_min_isr_partitions"} <= probe
    assert not probe & (worker_series_names() | producer_series_names() | sorter_series_names())
    rows = dashboard_rows(DASHBOARD)
    row = panel_expressions(rows[KAFKA_ROW])
    assert row and all(reads_only(expr, probe) for expr in row), row
    others = [expr for title, panels in rows.items() if title != KAFKA_ROW for expr in panel_expressions(panels)]
    assert not any(metric_names(expr) & probe for expr in others)
    alerts = alert_rules(RULES)
    assert {name for name, expr in alerts.items() if metric_names(expr) & probe} == KAFKA_ALERTS
    joined = " ".join(row)
    for metric in ("inspector_kafka_brokers", "inspector_kafka_up", "inspector_kafka_under_replicated_partitions",
                   "inspector_kafka_offline_partitions", "inspector_kafka_under_min_isr_partitions"):
        assert metric in joined, metric
    (group,) = [g for g in read_yaml(RULES)["groups"] if {r.get("alert") for r in g["rules"]} & KAFKA_ALERTS]
    assert {r["alert"] for r in group["rules"]} == KAFKA_ALERTS
    assert group["name"] in read_yaml(RULES_TEST)["group_eval_order"]


def test_the_kafka_alerts_wait_as_the_issue_asks() -> None:
    rules = {r["alert"]: r for g in read_yaml(RULES)["groups"] for r in g["rules"] if r.get("alert") in KAFKA_ALERTS}
    assert rules["KafkaUnderReplicatedPartitions"]["for"] == "2m"
    assert rules["KafkaOfflinePartitions"]["for"] == "30s"
    assert rules["KafkaOfflinePartitions"]["labels"]["severity"] == "critical"
    found = kafka_health_expressions()
    assert found["alert KafkaOfflinePartitions (bool)"] == \
        "max by (topic) (inspector_kafka_offline_partitions) > bool 0"
    assert len([label for label in found if label.startswith("dashboard: ")]) == len(
        panel_expressions(dashboard_rows(DASHBOARD)[KAFKA_ROW]))
