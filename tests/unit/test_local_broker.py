"""The local broker's JVM command: a broker that lives minutes compiles with C1 alone, one meant for hours keeps
the full JIT (no process is started here)."""

from __future__ import annotations

import pytest

from inspector.kafka.local_broker import LocalKafka, LocalKafkaCluster

QUICK_JIT = "-XX:TieredStopAtLevel=1"


@pytest.fixture(autouse=True)
def _no_jars_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalKafka, "_classpath", lambda _self: "kafka-jars/*")


def test_a_broker_for_minutes_compiles_with_c1_alone(tmp_path) -> None:
    cmd = LocalKafka(data_dir=tmp_path)._java_cmd("kafka.Kafka", "server.properties")
    assert QUICK_JIT in cmd
    assert cmd.index(QUICK_JIT) < cmd.index("kafka.Kafka")  # a JVM option, not the program's argument


def test_a_long_running_broker_keeps_the_full_jit(tmp_path) -> None:
    assert QUICK_JIT not in LocalKafka(data_dir=tmp_path, long_running=True)._java_cmd("kafka.Kafka")


def test_a_cluster_passes_it_to_every_node(tmp_path) -> None:
    cluster = LocalKafkaCluster(3, data_dir=tmp_path, long_running=True)
    assert all(QUICK_JIT not in node._java_cmd("kafka.Kafka") for node in cluster.nodes)
    assert all(QUICK_JIT in node._java_cmd("kafka.Kafka") for node in LocalKafkaCluster(2, data_dir=tmp_path).nodes)
