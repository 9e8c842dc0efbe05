"""The monitoring deploy files (Prometheus config and rules, Grafana provisioning and dashboard): where they are,
their PromQL, and the metric names it uses.

Shared by the static checks (tests/unit/test_monitoring_files.py, tests/unit/test_compose_files.py) and the
tests that run the expressions on a real Prometheus scraping a worker: those render `prometheus.local.yml.tmpl`
and substitute the Grafana variables with `substitute_grafana_variables`.
"""

from __future__ import annotations

import json
import re
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
GRAFANA_SUBSTITUTES = {"$__rate_interval": "30s", "$__interval": "5s", "$camera": ".*"}

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


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """The PromQL `expr` of every target of every panel, Grafana variables left in."""
    return [target["expr"] for panel in dashboard_panels(path) for target in panel.get("targets", [])
            if target.get("expr")]


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in read_yaml(path)["groups"] for rule in group["rules"]]


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


def worker_series_names() -> set[str]:
    """Every series name the worker and the UI expose, built from inspector.stream.metrics (counters with _total,
    histograms with _bucket/_sum/_count)."""
    from inspector.stream.metrics import build_metrics, build_ui_metrics

    return _series_names(build_metrics, build_ui_metrics)


def producer_series_names() -> set[str]:
    """Every series name the producer exposes, built from producers.metrics."""
    from producers.metrics import build_producer_metrics

    return _series_names(build_producer_metrics)


def ui_series_names() -> set[str]:
    """The series of `inspector ui` alone (the operators' verdicts), which a worker does not export."""
    from inspector.stream.metrics import build_ui_metrics

    return _series_names(build_ui_metrics)


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


def render_local_config(target: str, rules_dir: Path = RULES_DIR, producer_targets: tuple[str, ...] = ()) -> str:
    """prometheus.local.yml.tmpl with its placeholders filled: scrape the worker `target` (host:port) and the
    producers (host:port each) every second."""
    text = LOCAL_CONFIG_TEMPLATE.read_text()
    producers = ", ".join(f'"{t}"' for t in producer_targets)
    return (text.replace("{{TARGET}}", target).replace("{{PRODUCER_TARGETS}}", producers)
            .replace("{{RULES_DIR}}", str(Path(rules_dir).resolve())))
