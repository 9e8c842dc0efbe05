"""The compose stack test runs only when asked (`make test-compose`, i.e. `pytest tests/compose --compose`):
it builds images and starts containers, far too slow for `make test`. `--cluster` (`make test-compose CLUSTER=1`)
runs it on the three-broker cluster of docker-compose.cluster.yml."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--compose", action="store_true", help="run the compose stack for real (make test-compose)")
    parser.addoption("--cluster", action="store_true",
                     help="with --compose: three Kafka brokers (docker-compose.cluster.yml) instead of one")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--compose", default=False):
        return
    skip = pytest.mark.skip(reason="builds images and starts the compose stack: run `make test-compose`")
    for item in items:
        if item.get_closest_marker("compose"):
            item.add_marker(skip)
