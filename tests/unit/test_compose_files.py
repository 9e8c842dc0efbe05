"""Static checks of the compose files and the Dockerfile: no broker and no Docker engine.

The compose model comes from a Compose v2 client when one is installed, else from the compose-spec schema check
(tests/compose_model.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.compose_model import (
    COMPOSE,
    COMPOSE_CLUSTER,
    COMPOSE_CPU,
    COMPOSE_SCHEMA,
    bind_mounts,
    compose_model,
    environment,
    gpu_devices,
    interpolate,
    named_volumes,
    published_ports,
    schema_model,
)
from tests.deploy_expressions import (
    DASHBOARD,
    GRAFANA_DASHBOARDS,
    GRAFANA_DATASOURCES,
    PROMETHEUS_CONFIG,
    REPO_ROOT,
    RULES_DIR,
    read_yaml,
)

DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_model(COMPOSE)


def test_compose_schema_validates_and_rejects() -> None:
    """The fallback validator is a real one: it passes our file and fails a broken service."""
    model = schema_model([COMPOSE])
    model["services"]["inspector"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).validate(model)


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"kafka", "kafka-init", "inspector", "producer", "ui", "standin-plc", "sorter",
                                        "prometheus", "grafana"}
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
    assert init["image"] == compose["services"]["kafka"]["image"] == "apache/kafka:4.2.0"
    env = environment(init)
    assert {k: env[k] for k in ("FRAMES_PARTITIONS", "ALERTS_PARTITIONS", "SCORES_PARTITIONS", "DLQ_PARTITIONS")} \
        == {"FRAMES_PARTITIONS": "12", "ALERTS_PARTITIONS": "3", "SCORES_PARTITIONS": "3", "DLQ_PARTITIONS": "1"}
    script = " ".join(init.get("command") or [])
    for topic in ("frames", "defect-alerts", "frame-scores", "frames-dlq"):
        assert re.search(rf"create {topic} ", script), topic
    assert "--if-not-exists" in script


def test_service_shell_scripts_parse() -> None:
    services = interpolate(read_yaml(COMPOSE))["services"]
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
    # The official Python image by default; a registry-less host passes a Debian-based one (make test-compose).
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim" and lines[1] == "FROM ${BASE_IMAGE}"
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


def test_the_ui_is_published_on_loopback_and_reads_its_topics(compose: dict[str, Any]) -> None:
    ui = compose["services"]["ui"]
    assert ui["command"] == ["inspector", "ui"]
    assert ui["user"].split(":")[0] not in {"0", "root"}
    assert published_ports(ui) == ["127.0.0.1:8088:8088"]
    assert "/healthz" in " ".join(ui["healthcheck"]["test"]) and ":8088" in " ".join(ui["healthcheck"]["test"])
    env = environment(ui)
    assert env["INSPECTOR_UI__PORT"] == "8088" and env["INSPECTOR_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    script = " ".join(compose["services"]["kafka-init"].get("command") or [])
    for topic in ("defect-evidence", "alert-feedback"):
        assert re.search(rf"create {topic} ", script), topic
    from inspector.settings import load_settings

    assert load_settings(ui={"feedback_token": ""}).ui.feedback_token is None  # compose's unset token


def test_the_ui_writes_the_model_file_the_workers_serve(compose: dict[str, Any]) -> None:
    """Applying a proposal on the calibration page writes a new version of the workers' model file: the ui
    mounts the workers' model folder, from the same named volume, writable."""
    services = compose["services"]
    paths = {name: Path(environment(services[name])["INSPECTOR_MODEL__PATH"]) for name in ("inspector", "ui")}
    assert paths["ui"] == paths["inspector"]
    folder = str(paths["ui"].parent)
    ui, workers = named_volumes(services["ui"]), named_volumes(services["inspector"])
    assert folder in ui and folder in workers and ui[folder][0] == workers[folder][0]
    assert ui[folder][1] is False
    assert ui[folder][0] in compose["volumes"]


def test_every_topic_a_program_writes_or_reads_is_created(compose: dict[str, Any]) -> None:
    """The broker creates no topic by itself (KAFKA_AUTO_CREATE_TOPICS_ENABLE false): a topic the settings name
    and kafka-init does not create stops the program that uses it."""
    from inspector.settings import KafkaSettings, SorterSettings

    assert environment(compose["services"]["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    script = " ".join(compose["services"]["kafka-init"].get("command") or [])
    created = set(re.findall(r"^\s*create (\S+) ", script, re.MULTILINE))
    for settings in (KafkaSettings(), SorterSettings()):
        for name, value in settings.model_dump().items():
            if name.endswith("_topic") and value:
                assert value in created, f"{type(settings).__name__}.{name} = {value!r} is not created"


def _line_file_mount(service: dict[str, Any]) -> tuple[Path, str]:
    command = service["command"]
    in_container = command[command.index("--line") + 1]
    (source,) = [host for host, target in bind_mounts(service).items() if target == in_container]
    return source, in_container


def test_the_sorter_ejects_through_the_standin_plc(compose: dict[str, Any]) -> None:
    from inspector.settings import SorterSettings
    from inspector.sorter.line_file import ModbusConfig, load_line

    services = compose["services"]
    plc, sorter = services["standin-plc"], services["sorter"]
    assert plc["command"][:2] == ["inspector", "standin-plc"]
    plc_port = int(plc["command"][plc["command"].index("--port") + 1])
    assert plc["command"][plc["command"].index("--host") + 1] == "0.0.0.0"
    assert f"{plc_port}" in " ".join(plc["healthcheck"]["test"])

    assert sorter["command"][:2] == ["inspector", "sort"]
    source, target = _line_file_mount(sorter)
    assert source == (REPO_ROOT / "deploy" / "sorter" / "line.compose.yaml").resolve() and target.startswith("/etc/")
    line = load_line(source)
    # Every lane ejects through the stand-in PLC, and the producer's camera has a lane.
    for lane in line.lanes:
        assert isinstance(lane.actuator, ModbusConfig), lane.lane_id
        assert (lane.actuator.host, lane.actuator.port) == ("standin-plc", plc_port), lane.lane_id
    assert line.camera(environment(services["producer"])["INSPECTOR_PRODUCER__CAMERA_ID"]) is not None

    env = environment(sorter)
    assert env["INSPECTOR_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092" and env["INSPECTOR_SORTER__HOST"] == "0.0.0.0"
    port = env["INSPECTOR_SORTER__PORT"]
    assert port == str(SorterSettings().port) and port in [str(p) for p in sorter["expose"]]
    assert all(key.startswith("INSPECTOR_") for key in env)
    assert "/readyz" in " ".join(sorter["healthcheck"]["test"]) and f":{port}/" in " ".join(sorter["healthcheck"]["test"])
    assert sorter["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert sorter["depends_on"]["standin-plc"]["condition"] == "service_healthy"
    # Prometheus scrapes the sorter where it listens.
    jobs = {job["job_name"]: job for job in read_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert jobs["sorter"]["static_configs"] == [{"targets": [f"sorter:{port}"]}]
    for service in (plc, sorter):
        assert service["user"].split(":")[0] not in {"0", "root"}
        assert service["init"] is True


def test_images_are_variables_that_default_to_the_official_ones(compose: dict[str, Any]) -> None:
    raw = read_yaml(COMPOSE)["services"]
    official = {"kafka": ("KAFKA_IMAGE", "apache/kafka:"), "kafka-init": ("KAFKA_IMAGE", "apache/kafka:"),
                "prometheus": ("PROMETHEUS_IMAGE", "prom/prometheus:"), "grafana": ("GRAFANA_IMAGE", "grafana/grafana:"),
                "inspector": ("INSPECTOR_IMAGE", "inspector:"), "producer": ("INSPECTOR_IMAGE", "inspector:"),
                "ui": ("INSPECTOR_IMAGE", "inspector:"), "standin-plc": ("INSPECTOR_IMAGE", "inspector:"),
                "sorter": ("INSPECTOR_IMAGE", "inspector:")}
    for name, (variable, default) in official.items():
        assert raw[name]["image"].startswith(f"${{{variable}:-{default}"), name
        assert compose["services"][name]["image"].split("/")[-1].startswith(default.split("/")[-1]), name


def test_worker_defaults_follow_the_settings_measured_defaults(compose: dict[str, Any]) -> None:
    from inspector.settings import BatchSettings, Settings, WorkerProcessSettings

    env = environment(compose["services"]["inspector"])
    assert float(env["INSPECTOR_BATCH__MAX_WAIT_MS"]) == BatchSettings().max_wait_ms
    assert int(env["INSPECTOR_WORKERS__PROCESSES"]) == WorkerProcessSettings().processes
    assert env["INSPECTOR_LOG_LEVEL"] == Settings.model_fields["log_level"].default
    cpu = environment(compose_model(COMPOSE, COMPOSE_CPU)["services"]["inspector"])
    assert int(cpu["INSPECTOR_BATCH__MAX_SIZE"]) == BatchSettings().max_size


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return compose_model(COMPOSE, COMPOSE_CPU, COMPOSE_CLUSTER)


def test_health_check_arguments_have_no_spaces(compose: dict[str, Any], cluster: dict[str, Any]) -> None:
    """podman's Docker-compatible API (4.x) joins a CMD health check and splits it again at spaces."""
    for name, service in {**compose["services"], **cluster["services"]}.items():
        test = (service.get("healthcheck") or {}).get("test") or []
        if test and test[0] == "CMD":
            assert all(not re.search(r"\s", arg) for arg in test), (name, test)


def test_long_running_services_say_their_grace_period(compose: dict[str, Any], cluster: dict[str, Any]) -> None:
    """podman's Docker API stops a container without one at once (SIGKILL); Docker would wait 10 s."""
    for name, service in {**compose["services"], **cluster["services"]}.items():
        if service.get("restart") != "no":
            assert service.get("stop_grace_period"), name


def test_ports_and_volumes_read_alike_in_the_files_short_form_and_a_clients_long_form() -> None:
    """A Compose client writes ports and volumes as objects: the checks above must read them as the files' strings."""
    short = {"ports": ["127.0.0.1:8088:8088"], "volumes": ["models:/app/models", "cache:/c:ro", "./x:/x"]}
    long = {"ports": [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 8088, "published": "8088",
                       "protocol": "tcp"}],
            "volumes": [{"type": "volume", "source": "models", "target": "/app/models"},
                        {"type": "volume", "source": "cache", "target": "/c", "read_only": True},
                        {"type": "bind", "source": "./x", "target": "/x"}]}
    for service in (short, long):
        assert published_ports(service) == ["127.0.0.1:8088:8088"]
        assert named_volumes(service) == {"/app/models": ("models", False), "/c": ("cache", True)}
    assert published_ports({"ports": [{"target": 9090, "published": 9090}]}) == ["9090:9090"]
