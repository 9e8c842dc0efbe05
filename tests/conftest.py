"""Shared fixtures. The Kafka broker comes from one session fixture, chosen in this order:
KAFKA_BOOTSTRAP_SERVERS if set -> testcontainers Kafka if a Docker engine answers -> the local broker
(real Apache Kafka from Maven Central, see inspector/kafka/local_broker.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inspector.settings import prepare_torch_runtime

prepare_torch_runtime()  # as the CLI does, before torch allocates: the tests score at the worker's speed

import torch  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@dataclass
class Broker:
    bootstrap_servers: str
    kind: str  # "env", "testcontainers" or "local"
    local: object | None = None  # the LocalKafka, when we own the process (fault-injection tests)


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if from_env:
        yield Broker(from_env, "env")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield Broker(container.get_bootstrap_server(), "testcontainers")
        return
    from inspector.kafka.local_broker import LocalKafka

    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield Broker(broker.bootstrap_servers, "local", broker)
    finally:
        broker.close()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic banana data set (generated, never downloaded)."""
    from inspector.synthetic.bananas import write_dataset

    root = tmp_path_factory.mktemp("bananas")
    write_dataset(root, n_train=24, n_test_good=8, n_test_per_defect=2, size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    from inspector.paths import DEFAULT_MODEL

    if not DEFAULT_MODEL.is_file():
        pytest.fail(f"the default model {DEFAULT_MODEL} is missing: run `make model`")
    return DEFAULT_MODEL
