"""A real Prometheus server for the integration tests: started on a free loopback port with the deploy files'
rules and a local scrape config, queried through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from inspector.kafka.local_broker import free_port
from tests.deploy_expressions import RULES_DIR, render_local_config

from .conftest import stop_process

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
T = TypeVar("T")


@dataclass
class Prometheus:
    """A Prometheus server process and its HTTP API."""

    proc: subprocess.Popen
    url: str
    config_path: Path
    log_path: Path

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error as JSON
            return json.loads(exc.read() or b"{}") | {"status": "error", "http": exc.code}

    def query(self, expr: str) -> tuple[list[dict], str]:
        """(result series, error text or "")."""
        reply = self.get("/api/v1/query", query=expr)
        if reply.get("status") != "success":
            return [], f"{reply.get('errorType')}: {reply.get('error')}"
        return reply["data"]["result"], ""

    def wait_for(self, what: str, check: Callable[[], T], timeout_s: float = 60) -> T:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            got = check()
            if got:
                return got
            time.sleep(0.5)
        raise AssertionError(f"waited {timeout_s}s for {what}")

    def wait_for_series(self, expr: str, timeout_s: float = 60) -> list[dict]:
        return self.wait_for(expr, lambda: self.query(expr)[0], timeout_s)

    def alerts(self, state: str) -> dict[str, list[dict]]:
        """Active alerts in `state` ("pending" or "firing"), by alert name."""
        found: dict[str, list[dict]] = {}
        for alert in self.get("/api/v1/alerts")["data"]["alerts"]:
            if alert["state"] == state:
                found.setdefault(alert["labels"]["alertname"], []).append(alert)
        return found

    def reload(self, config: str) -> None:
        """Replace the configuration and apply it (needs --web.enable-lifecycle)."""
        self.config_path.write_text(config)
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200, r.read()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@contextmanager
def prometheus_servers(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Yields start(target, ...): a Prometheus on a free loopback port scraping `target` (and the producer, sorter
    and probe targets given) with the local config and the rules; every server started is stopped on exit."""
    started: list[Prometheus] = []

    def start(target: str, producer_targets: tuple[str, ...] = (), sorter_targets: tuple[str, ...] = (), *,
              rules_dir: Path = RULES_DIR, kafka_health_targets: tuple[str, ...] = ()) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(render_local_config(target, rules_dir, producer_targets, sorter_targets,
                                              kafka_health_targets))
        port = free_port()
        log_path = tmp_path / "prometheus.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
                stdout=log, stderr=subprocess.STDOUT)
        prom = Prometheus(proc, f"http://127.0.0.1:{port}", config, log_path)
        started.append(prom)

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        prom.wait_for("/-/ready", ready, timeout_s=60)
        return prom

    try:
        yield start
    finally:
        for prom in started:
            stop_process(prom.proc)
