"""Integration fixtures: unique topics per test on the session broker, worker processes, topic readers, the
operator's page (`inspector ui`) and a headless Chromium to look at it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from inspector.kafka.kafka_python.clients import create_topics
from inspector.kafka.local_broker import LocalKafka, free_port
from inspector.settings import KafkaSettings, ProducerSettings

pytestmark = pytest.mark.kafka


@dataclass
class Topics:
    """One test's own topic names and consumer group on the shared broker."""

    bootstrap: str
    frames: str
    alerts: str
    scores: str
    dlq: str
    group: str
    evidence: str = "defect-evidence"
    feedback: str = "alert-feedback"

    def kafka_settings(self, **extra: object) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap, frames_topic=self.frames, alerts_topic=self.alerts,
                             scores_topic=self.scores, dlq_topic=self.dlq, group_id=self.group,
                             **{"evidence_topic": self.evidence, "feedback_topic": self.feedback, **extra})

    def env(self) -> dict[str, str]:
        return {
            "INSPECTOR_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "INSPECTOR_KAFKA__FRAMES_TOPIC": self.frames,
            "INSPECTOR_KAFKA__ALERTS_TOPIC": self.alerts,
            "INSPECTOR_KAFKA__SCORES_TOPIC": self.scores,
            "INSPECTOR_KAFKA__DLQ_TOPIC": self.dlq,
            "INSPECTOR_KAFKA__GROUP_ID": self.group,
            "INSPECTOR_KAFKA__EVIDENCE_TOPIC": self.evidence,
            "INSPECTOR_KAFKA__FEEDBACK_TOPIC": self.feedback,
        }


@contextmanager
def restartable_broker(data_dir: Path, **kwargs: object) -> Iterator[LocalKafka]:
    """A broker of a test's own, which it may kill and restart (never the session one)."""
    # A short broker session: after a SIGKILL the restarted broker waits out its own old registration.
    broker = LocalKafka(data_dir=data_dir, extra_config={"broker.session.timeout.ms": "3000",
                                                         "broker.heartbeat.interval.ms": "1000"}, **kwargs)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture()
def topics(kafka_broker, request) -> Topics:
    tag = f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    t = Topics(kafka_broker.bootstrap_servers, f"frames-{tag}", f"alerts-{tag}", f"scores-{tag}", f"dlq-{tag}",
               f"group-{tag}", f"evidence-{tag}", f"feedback-{tag}")
    create_topics(t.kafka_settings(), {t.frames: 2, t.alerts: 1, t.scores: 1, t.dlq: 1, t.evidence: 1, t.feedback: 1})
    return t


@dataclass
class WorkerProcess:
    """`inspector serve` in a child process, as it runs in production."""

    proc: subprocess.Popen
    metrics_port: int
    log_path: Path

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def http_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log()}")
            if self.http_status("/readyz") == 200:
                return
            time.sleep(0.25)
        raise AssertionError(f"worker not ready in {timeout_s}s:\n{self.log()}")

    def terminate(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture()
def start_worker(tmp_path, default_model_path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(topics: Topics, wait_ready: bool = True, serve_args: tuple[str, ...] = (), **env: str) -> WorkerProcess:
        port = free_port()
        log_path = tmp_path / f"worker-{len(started)}.log"
        full_env = {**os.environ, **topics.env(), "INSPECTOR_HTTP__PORT": str(port),
                    "INSPECTOR_MODEL__PATH": str(default_model_path), "INSPECTOR_MODEL__DEVICE": "cpu",
                    "INSPECTOR_MODEL__RELOAD_POLL_S": "1", **env}
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "inspector", "serve", *serve_args], env=full_env, stdout=log,
                                    stderr=subprocess.STDOUT)
        worker = WorkerProcess(proc, port, log_path)
        started.append(worker)
        if wait_ready:
            worker.wait_ready()
        return worker

    yield start
    for w in started:
        w.kill()


@dataclass
class TopicReader:
    """Reads a topic from the beginning with its own consumer (no group), accumulating records."""

    bootstrap: str
    topic: str
    records: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                       auto_offset_reset="earliest", isolation_level="read_committed")
        parts = self._consumer.partitions_for_topic(self.topic) or {0}
        tps = [TopicPartition(self.topic, p) for p in parts]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)

    def poll(self, timeout_s: float = 0.5) -> list:
        got = [r for recs in self._consumer.poll(timeout_ms=int(timeout_s * 1000)).values() for r in recs]
        self.records.extend(got)
        return got

    def until(self, predicate, timeout_s: float = 120) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if predicate(self.records):
                return self.records
        return self.records

    def json_values(self) -> list[dict]:
        return [json.loads(r.value) for r in self.records]

    def close(self) -> None:
        self._consumer.close()


@pytest.fixture()
def reader(kafka_broker) -> Iterator:
    opened: list[TopicReader] = []

    def open_reader(topic: str) -> TopicReader:
        r = TopicReader(kafka_broker.bootstrap_servers, topic)
        opened.append(r)
        return r

    yield open_reader
    for r in opened:
        r.close()


def stop_process(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM a process a fixture started, and SIGKILL it if it has not exited within `grace_s`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def distinct_frame_ids(records: list) -> set[str]:
    return {json.loads(r.value)["frame_id"] for r in records}


def committed_offsets(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offset per partition, end offset per partition) for a group on a topic."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or {0}]
        ends = c.end_offsets(tps)
        return ({tp.partition: (c.committed(tp) or 0) for tp in tps}, {tp.partition: ends[tp] for tp in tps})
    finally:
        c.close()


def producer_settings(**kw: object) -> ProducerSettings:
    return ProducerSettings(**{"fps": 0, "deadline_ms": 300, **kw})


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"


@dataclass
class UiProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_connected(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ui exited {self.proc.returncode}:\n{self.log()}")
            try:
                if json.loads(self.get("/healthz")[1]).get("kafka"):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"ui not connected in {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture()
def start_ui(tmp_path) -> Iterator:
    started: list[UiProcess] = []

    def start(topics: Topics, **env: str) -> UiProcess:
        port = free_port()
        log_path = tmp_path / f"ui-{len(started)}.log"
        full_env = {**os.environ, **topics.env(), "INSPECTOR_UI__PORT": str(port),
                    "INSPECTOR_UI__GROUP_ID": f"ui-{uuid.uuid4().hex[:8]}", **env}
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "inspector", "ui"], env=full_env, stdout=log,
                                    stderr=subprocess.STDOUT)
        ui = UiProcess(proc, port, log_path)
        started.append(ui)
        ui.wait_connected()
        return ui

    yield start
    for ui in started:
        stop_process(ui.proc)


@pytest.fixture()
def browser() -> Iterator:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make system-deps` installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(predicate, timeout_s: float = 60, what: str = "condition"):
    """Poll until predicate() is truthy (generous: the machine is shared); returns its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # an element replaced while we read it: look again
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
