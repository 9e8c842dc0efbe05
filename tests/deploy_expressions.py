"""The monitoring deploy files (Prometheus config and rules, Grafana provisioning and dashboard): where they are,
their PromQL, and the metric names it uses.

Shared by the static checks (tests/unit/test_monitoring_files.py, tests/unit/test_compose_files.py) and the
tests that run the expressions on a real Prometheus scraping a worker: those render `prometheus.local.yml.tmpl`
and substitute the Grafana variables with `substitute_grafana_variables`. A worker does not export the UI's or
the sorter's series: the dashboard's Sorter row and the sorter's rules are proven on a live sorter with
`assert_sorter_expressions_have_data`, the Kafka cluster row and the Kafka alerts on a live `inspector kafka-health`
(`kafka_health_expressions`).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULES = RULES_DIR / "inspector.rules.yml"
LOCAL_CONFIG_TEMPLATE = PROMETHEUS_DIR / "prometheus.local.yml.tmpl"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "inspector.json"
GRAFANA_DATASOURCES = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

# The only Grafana variables dashboard expressions may use, and plain PromQL to put in their place.
GRAFANA_SUBSTITUTES = {"$__rate_interval": "30s", "$__interval": "5s", "$camera": ".*", "$lane": ".*"}
SORTER_ROW = "Sorter"  # the dashboard row whose panels read `inspector sort`'s metrics
KAFKA_ROW = "Kafka cluster"  # the dashboard row whose panels read `inspector kafka-health`'s metrics
KAFKA_ALERTS = frozenset({"KafkaUnderReplicatedPartitions", "KafkaOfflinePartitions", "KafkaBrokerProbeDown"})

# Words of PromQL that are not metric names when they stand outside braces, brackets and strings.
_KEYWORDS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio", "and", "or", "unless", "atan2", "by", "without", "on", "ignoring",
    "group_left", "group_right", "bool", "offset", "inf", "nan",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# A number or duration (0.3, 1e3, 5m) is consumed whole so that its letters never look like a name.
_TOKEN = re.compile(r"\d[\w.]*|([A-Za-z_:][\w:]*)(\s*\()?")


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(Path(path).read_text())


def dashboard_panels(path: Path = DASHBOARD) -> list[dict[str, Any]]:
    """Every panel of a Grafana dashboard, rows' nested panels included (rows themselves left out)."""
    found: list[dict[str, Any]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            if panel.get("type") != "row":
                found.append(panel)
            walk(panel.get("panels", []))

    walk(json.loads(Path(path).read_text())["panels"])
    return found


def dashboard_rows(path: Path = DASHBOARD) -> dict[str, list[dict[str, Any]]]:
    """The panels under each row, by row title: a collapsed row holds its panels, an open one is followed by them."""
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = rows.setdefault("", [])
    for panel in json.loads(Path(path).read_text())["panels"]:
        if panel.get("type") == "row":
            current = rows.setdefault(panel["title"], [])
            current.extend(panel.get("panels", []))
        else:
            current.append(panel)
    return rows


def panel_expressions(panels: list[dict[str, Any]]) -> list[str]:
    """The PromQL `expr` of every target of the panels, Grafana variables left in."""
    return [target["expr"] for panel in panels for target in panel.get("targets", []) if target.get("expr")]


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """The PromQL `expr` of every target of every panel, Grafana variables left in."""
    return panel_expressions(dashboard_panels(path))


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in read_yaml(path)["groups"] for rule in group["rules"]]


def alert_rules(path: Path = RULES) -> dict[str, str]:
    """Alert name -> its `expr`."""
    return {rule["alert"]: str(rule["expr"]) for rule in _rules(path) if "alert" in rule}


def rule_expressions(path: Path = RULES) -> list[str]:
    """The `expr` of every recording and alerting rule in a Prometheus rule file."""
    return [str(rule["expr"]) for rule in _rules(path)]


def recorded_names(path: Path = RULES) -> set[str]:
    """Series names that the recording rules of a rule file define."""
    return {rule["record"] for rule in _rules(path) if "record" in rule}


def substitute_grafana_variables(expr: str, substitutes: dict[str, str] = GRAFANA_SUBSTITUTES) -> str:
    """Plain PromQL from a dashboard expression; longer variable names first ($__rate_interval, $__interval)."""
    for name in sorted(substitutes, key=len, reverse=True):
        expr = expr.replace(name, substitutes[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (a lexical scan, enough for the expressions we write)."""
    text = _STRING.sub('""', substitute_grafana_variables(expr))
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _TOKEN.finditer(text):
        name, call = match.groups()
        if name and not call and name not in _KEYWORDS:
            names.add(name)
    return names


def reads_only(expr: str, names: set[str]) -> bool:
    """Whether every metric the expression selects is one of `names` (and it selects one)."""
    found = metric_names(expr)
    return bool(found) and found <= names


# Strings and label matchers are copied as they are; a comparison outside them gets `bool`.
_COMPARISON = re.compile(r'(?P<keep>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|\{[^{}]*\})'
                         r"|(?P<op>==|!=|>=|<=|>|<)(?P<bool>\s*bool\b)?")


def with_bool_comparisons(expr: str) -> str:
    """`a > 0.3` -> `a > bool 0.3`: the comparison keeps every series (value 0 or 1) instead of filtering, so an
    alert's expression returns data on a healthy line when every series it compares exists."""

    def replace(m: re.Match[str]) -> str:
        if m.group("keep") or m.group("bool"):
            return m.group(0)
        return f"{m.group('op')} bool"

    return _COMPARISON.sub(replace, expr)


def worker_series_names() -> set[str]:
    """Every series name the worker and the UI expose, built from inspector.stream.metrics and inspector.ui.metrics
    (counters with _total, histograms with _bucket/_sum/_count)."""
    from inspector.stream.metrics import build_metrics
    from inspector.ui.metrics import build_ui_metrics

    return _series_names(build_metrics, build_ui_metrics)


def producer_series_names() -> set[str]:
    """Every series name the producer exposes, built from producers.metrics."""
    from producers.metrics import build_producer_metrics

    return _series_names(build_producer_metrics)


def ui_series_names() -> set[str]:
    """The series of `inspector ui` alone (the operators' verdicts), which a worker does not export."""
    from inspector.ui.metrics import build_ui_metrics

    return _series_names(build_ui_metrics)


def sorter_series_names() -> set[str]:
    """Every series name `inspector sort` exposes, built from inspector.sorter.metrics (a worker exports none)."""
    from inspector.sorter.metrics import build_sorter_metrics

    return _series_names(build_sorter_metrics)


def kafka_health_series_names() -> set[str]:
    """Every series name `inspector kafka-health` exposes, built from inspector.kafka_health.metrics."""
    from inspector.kafka_health.metrics import build_kafka_health_metrics

    return _series_names(build_kafka_health_metrics)


def _series_names(*builders: Any) -> set[str]:
    """Series names of the metrics the builders register (counters with _total, histograms with
    _bucket/_sum/_count)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    for build in builders:
        build(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def render_local_config(target: str, rules_dir: Path = RULES_DIR, producer_targets: tuple[str, ...] = (),
                        sorter_targets: tuple[str, ...] = (), kafka_health_targets: tuple[str, ...] = ()) -> str:
    """prometheus.local.yml.tmpl with its placeholders filled: scrape the worker `target` (host:port; "" for none),
    the producers, the sorters and the Kafka health probes (host:port each) every second."""

    def targets(found: tuple[str, ...]) -> str:
        return ", ".join(f'"{t}"' for t in found)

    text = LOCAL_CONFIG_TEMPLATE.read_text()
    return (text.replace('"{{TARGET}}"', targets((target,) if target else ())).replace("{{TARGET}}", target)
            .replace("{{PRODUCER_TARGETS}}", targets(producer_targets))
            .replace("{{SORTER_TARGETS}}", targets(sorter_targets))
            .replace("{{KAFKA_HEALTH_TARGETS}}", targets(kafka_health_targets))
            .replace("{{RULES_DIR}}", str(Path(rules_dir).resolve())))


# --- the sorter's expressions on a live Prometheus -----------------------------------------------------


def sorter_expressions(sorter_names: set[str], dashboard: Path = DASHBOARD, rules: Path = RULES) -> dict[str, str]:
    """What to ask a Prometheus that scrapes a sorter, by a label naming its source: every dashboard and recording
    rule expression that reads only the sorter's series (Grafana variables substituted), every recorded series of
    those rules, and every alert rule on them in its `bool` form."""
    found: dict[str, str] = {}
    for expr in dashboard_expressions(dashboard):
        if reads_only(expr, sorter_names):
            found[f"dashboard: {expr}"] = substitute_grafana_variables(expr)
    for rule in _rules(rules):
        expr = str(rule["expr"])
        if not reads_only(expr, sorter_names):
            continue
        if "record" in rule:
            found[f"recording rule {rule['record']}"] = expr
            found[f"recorded series {rule['record']}"] = rule["record"]
        else:
            found[f"alert {rule['alert']} (bool)"] = with_bool_comparisons(expr)
    return found


def kafka_health_expressions(dashboard: Path = DASHBOARD, rules: Path = RULES) -> dict[str, str]:
    """What to ask a Prometheus that scrapes a Kafka health probe, by a label naming its source: every expression of
    the Kafka cluster row and every Kafka alert in its `bool` form."""
    found = {f"dashboard: {expr}": substitute_grafana_variables(expr)
             for expr in panel_expressions(dashboard_rows(dashboard).get(KAFKA_ROW, []))}
    alerts = alert_rules(rules)
    found.update({f"alert {name} (bool)": with_bool_comparisons(alerts[name]) for name in sorted(KAFKA_ALERTS)})
    return found


def instant_query(prometheus_url: str, expr: str) -> tuple[list[dict[str, Any]], str]:
    """(result series, error text or "") of an instant query."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
    except urllib.error.HTTPError as exc:  # a PromQL error comes as JSON with 400/422
        body = json.loads(exc.read() or b"{}")
    except OSError as exc:
        return [], str(exc)
    if body.get("status") != "success":
        return [], f"{body.get('errorType')}: {body.get('error')}"
    return body["data"]["result"], ""


def assert_sorter_expressions_have_data(prometheus_url: str, sorter_names: set[str], timeout_s: float = 60.0) -> None:
    """Every Sorter-row and sorter-rule expression (`sorter_expressions`) returns data, none of it NaN, within
    `timeout_s`; an AssertionError lists the ones that do not. The sorter must be scraped and have fired pulses
    within the last `$__rate_interval` (30 s), or its quantiles are NaN."""
    expressions = sorter_expressions(sorter_names)
    panels = panel_expressions(dashboard_rows().get(SORTER_ROW, []))
    assert panels and all(f"dashboard: {e}" in expressions for e in panels), \
        f"the {SORTER_ROW!r} row reads metrics that are not in sorter_names"
    assert any(label.startswith("alert ") for label in expressions), "no alert rule reads the sorter's metrics"
    deadline = time.monotonic() + timeout_s
    while True:
        failures = []
        for label, expr in expressions.items():
            result, error = instant_query(prometheus_url, expr)
            nan = [s["metric"] for s in result if math.isnan(float(s["value"][1]))]
            if error or not result or nan:
                failures.append(f"{label} -> {error or ('NaN for ' + str(nan) if nan else 'no data')}")
        if not failures:
            return
        if time.monotonic() > deadline:
            raise AssertionError("sorter expressions without data:\n" + "\n".join(failures))
        time.sleep(1.0)
