"""Static checks of the replicated variant (docker-compose.cluster.yml over the single-broker files): three KRaft
nodes, every client bootstrapping from all of them, and topics created with three replicas. No broker, no engine."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.compose_model import (
    COMPOSE,
    COMPOSE_CLUSTER,
    COMPOSE_CPU,
    compose_model,
    environment,
    published_ports,
    schema_model,
)
from tests.deploy_expressions import PROMETHEUS_CONFIG, read_yaml

CLUSTER_NODES = ("kafka-1", "kafka-2", "kafka-3")
CLUSTER_BOOTSTRAP = "kafka-1:9092,kafka-2:9092,kafka-3:9092"
KAFKA_CLIENTS = ("kafka-init", "inspector", "producer", "ui", "sorter", "kafka-health")


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return compose_model(COMPOSE, COMPOSE_CPU, COMPOSE_CLUSTER)


def _active(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services `docker compose up` starts: those without a profile (none of ours is asked for)."""
    return {name: service for name, service in model["services"].items() if not service.get("profiles")}


def test_the_cluster_replaces_the_single_broker_with_three_kraft_nodes(cluster: dict[str, Any]) -> None:
    services = cluster["services"]
    # Docker Compose leaves an inactive profile's service out of its model; the schema check keeps it, marked.
    assert "kafka" not in services or services["kafka"]["profiles"] == ["single-broker"]
    assert set(_active(cluster)) == {*CLUSTER_NODES, "kafka-init", "inspector", "producer", "ui", "standin-plc",
                                     "sorter", "prometheus", "grafana", "kafka-health"}
    nodes = {name: environment(services[name]) for name in CLUSTER_NODES}
    assert [env["KAFKA_NODE_ID"] for env in nodes.values()] == ["1", "2", "3"]
    assert len({env["KAFKA_BROKER_RACK"] for env in nodes.values()}) == 3
    for name, env in nodes.items():
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093", name
        assert env["KAFKA_ADVERTISED_LISTENERS"].startswith(f"PLAINTEXT://{name}:9092,"), name
        assert services[name]["hostname"] == name
        assert {k: env[k] for k in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                                    "KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
                                    "KAFKA_MIN_INSYNC_REPLICAS", "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE",
                                    "KAFKA_AUTO_CREATE_TOPICS_ENABLE")} == {
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
            "KAFKA_DEFAULT_REPLICATION_FACTOR": "3", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
            "KAFKA_MIN_INSYNC_REPLICAS": "2", "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE": "false",
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false"}, name
        assert env["CLUSTER_ID"] == environment(services["kafka-1"])["CLUSTER_ID"]
        assert f"{name}:9092" in services[name]["healthcheck"]["test"], name
    # Each node is published on its own loopback port, and advertises that port to the host's programs.
    published = [port.split(":")[-2] for name in CLUSTER_NODES for port in published_ports(services[name])]
    assert len(set(published)) == 3
    for name, port in zip(CLUSTER_NODES, published, strict=True):
        assert nodes[name]["KAFKA_ADVERTISED_LISTENERS"].endswith(f"HOST://127.0.0.1:{port}"), name
    init = services["kafka-init"]
    assert set(init["depends_on"]) == set(CLUSTER_NODES)
    assert all(init["depends_on"][n]["condition"] == "service_healthy" for n in CLUSTER_NODES)


def test_every_cluster_client_bootstraps_from_every_broker_and_asks_for_three_replicas(cluster: dict[str, Any]) -> None:
    from inspector.settings import load_settings

    for name in KAFKA_CLIENTS:
        env = environment(cluster["services"][name])
        assert env["INSPECTOR_KAFKA__BOOTSTRAP_SERVERS"] == CLUSTER_BOOTSTRAP, name
        assert (env["INSPECTOR_KAFKA__REPLICATION_FACTOR"], env["INSPECTOR_KAFKA__MIN_INSYNC_REPLICAS"]) == ("3", "2")
    # The settings accept what the services are given.
    kafka = load_settings(kafka={"bootstrap_servers": CLUSTER_BOOTSTRAP, "replication_factor": 3,
                                 "min_insync_replicas": 2}).kafka
    assert kafka.replication_factor == 3
    # The single-broker file is untouched by the override.
    single = compose_model(COMPOSE, COMPOSE_CPU)["services"]
    assert environment(single["kafka-init"])["INSPECTOR_KAFKA__REPLICATION_FACTOR"] == "1"
    assert "kafka-health" not in single and not single["kafka"].get("profiles")


def _run_topics_script(service: dict[str, Any], tmp_path: Path) -> list[list[str]]:
    """kafka-init's script run by sh with its environment, kafka-topics.sh replaced by a recorder: the argument
    lists of each call."""
    calls = tmp_path / "calls"
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\t" "$a"; done >> {calls}\necho >> {calls}\n')
    fake.chmod(0o755)
    script = service["command"][-1].replace("/opt/kafka/bin/kafka-topics.sh", str(fake))
    result = subprocess.run(["sh", "-ec", script], env={"PATH": "/usr/bin:/bin", **environment(service)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [line.rstrip("\t").split("\t") for line in calls.read_text().splitlines()]


@pytest.mark.parametrize("variant", ["single", "cluster"])
def test_kafka_init_creates_the_topics_with_the_variants_replicas(variant: str, tmp_path: Path) -> None:
    files = [COMPOSE, COMPOSE_CPU] + ([COMPOSE_CLUSTER] if variant == "cluster" else [])
    # Interpolated and merged as Compose does (the script's `$$` become `$`).
    calls = _run_topics_script(schema_model(files)["services"]["kafka-init"], tmp_path)
    creates = [call for call in calls if "--create" in call]
    assert len(creates) == 9 and "--describe" in calls[-1]
    bootstrap, replicas, min_isr = {"single": ("kafka:9092", "1", "1"), "cluster": (CLUSTER_BOOTSTRAP, "3", "2")}[variant]
    for call in creates:
        topic = call[call.index("--topic") + 1]
        assert call[call.index("--bootstrap-server") + 1] == bootstrap, topic
        assert call[call.index("--replication-factor") + 1] == replicas, topic
        configs = [call[i + 1] for i, arg in enumerate(call) if arg == "--config"]
        assert f"min.insync.replicas={min_isr}" in configs and "unclean.leader.election.enable=false" in configs, topic
    frames = next(call for call in creates if call[call.index("--topic") + 1] == "frames")
    assert "retention.ms=3600000" in frames


def test_the_probe_is_scraped_where_it_listens(cluster: dict[str, Any]) -> None:
    probe = cluster["services"]["kafka-health"]
    assert probe["command"][:2] == ["inspector", "kafka-health"]
    env = environment(probe)
    assert env["INSPECTOR_HTTP__HOST"] == "0.0.0.0"
    port = env["INSPECTOR_HTTP__PORT"]
    assert port in [str(p) for p in probe["expose"]] and f":{port}/healthz" in " ".join(probe["healthcheck"]["test"])
    assert probe["user"].split(":")[0] not in {"0", "root"} and probe["init"] is True
    jobs = {job["job_name"]: job for job in read_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    (sd,) = jobs["kafka-health"]["dns_sd_configs"]
    assert sd["names"] == ["kafka-health"] and str(sd["port"]) == port
    assert probe["image"] == cluster["services"]["inspector"]["image"]
