"""`inspector sort` in a child process for the integration tests, with its own topics, a line file whose one lane
ejects through a stand-in PLC, and hand-made alerts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import yaml
from kafka import KafkaProducer

from inspector.contracts import Alert, Box
from inspector.kafka.kafka_python.clients import create_topics
from inspector.kafka.local_broker import free_port
from tests.integration.conftest import Topics

MS = 1_000_000
COIL = 3
GEOMETRY = {"belt_speed_m_s": 1.0, "metres_per_pixel": 0.001, "ejector_distance_m": 0.5,
            "actuation_latency_ms": 20, "pulse_ms": 30, "object_length_m": 0.05}


class SorterProcess:
    """`inspector sort` in a child process, with its own topics for outcomes, late alerts and dead letters."""

    def __init__(self, topics: Topics, line_file: Path, log_path: Path, like: SorterProcess | None = None,
                 **env_extra: str) -> None:
        """`like`: a sorter before this one, whose topics and group this one takes over (a restart)."""
        if like is not None:
            self.ejections, self.late, self.dlq, self.group = like.ejections, like.late, like.dlq, like.group
        else:
            tag = uuid.uuid4().hex[:6]
            self.ejections, self.late, self.dlq = f"ejections-{tag}", f"late-{tag}", f"alerts-dlq-{tag}"
            self.group = f"sorter-{tag}"
            create_topics(topics.kafka_settings(), {self.ejections: 1, self.late: 1, self.dlq: 1})
        self.port = free_port()
        self.log_path = log_path
        env = {**os.environ, **topics.env(), "INSPECTOR_KAFKA__EJECTIONS_TOPIC": self.ejections,
               "INSPECTOR_SORTER__LATE_TOPIC": self.late, "INSPECTOR_SORTER__DLQ_TOPIC": self.dlq,
               "INSPECTOR_SORTER__GROUP_ID": self.group, "INSPECTOR_SORTER__PORT": str(self.port),
               "INSPECTOR_SORTER__RECONNECT_MAX_S": "1", **env_extra}
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "inspector", "sort", "--line", str(line_file)],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"sorter exited {self.proc.returncode}:\n{self.log()}"
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"sorter not ready in {timeout_s}s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(f"{name}{{{wanted}}}" if wanted else f"{name} "):
                return float(line.rsplit(" ", 1)[1])
        return float("nan")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def line_file(path: Path, plc_port: int, **geometry: object) -> Path:
    path.write_text(yaml.safe_dump({"defaults": {**GEOMETRY, **geometry}, "lanes": [
        {"id": "lane-1", "cameras": [{"id": "cam-1"}],
         "actuator": {"protocol": "modbus", "host": "127.0.0.1", "port": plc_port, "coil": COIL, "timeout_s": 0.5}}]}))
    return path


def defect_alert(frame_id: str, captured_ns: int, x: int = 128, camera: str = "cam-1") -> Alert:
    return Alert(frame_id=frame_id, camera_id=camera, sequence=0, captured_ns=captured_ns, scored_ns=captured_ns,
                 published_ns=captured_ns, score=1.0, threshold=0.5, model_id="m", model_version="1",
                 box=Box(x0=x - 4, y0=120, x1=x + 4, y1=136, area_fraction=0.01))


def send_alerts(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for value in values:
        producer.send(topic, key=b"cam-1", value=value)
    producer.flush()
    producer.close()
