"""docker-compose.yml run for real (`make test-compose`, the release check): images built here, kafka, kafka-init,
two inspector replicas on the CPU, the synthetic producer, the sorter with its stand-in PLC, and Prometheus started
by Docker Compose, and the line checked from the host as a user would see it. Grafana's server cannot be installed
here: it stays out.

With `--cluster` (`make test-compose CLUSTER=1`) the stack runs on docker-compose.cluster.yml's three brokers and its
Kafka health probe, and the broker leading a partition of `frames` is killed mid-stream and restarted.

The tests run in file order on one stack; the last one takes it down and checks that nothing is left.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer

from inspector.contracts import Alert, FrameScore, header_value
from inspector.kafka.local_broker import free_port
from inspector.settings import ProducerSettings
from inspector.sorter.line_file import ModbusConfig, load_line
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream
from tests.compose.running_stack import Stack
from tests.compose.stack import (
    CLUSTER_FILES,
    COMPOSE_FILES,
    INSPECTOR,
    KAFKA,
    LOGS,
    PROJECT,
    PROMETHEUS,
    WORK,
    Compose,
    Container,
    HealthTicker,
    build_images,
    container_log,
    containers,
    image_size_mb,
    podman,
    podman_service,
    process_uids,
    save_logs,
    service_containers,
    wait_until,
)
from tests.deploy_expressions import (
    GRAFANA_SUBSTITUTES,
    KAFKA_ALERTS,
    REPO_ROOT,
    dashboard_expressions,
    kafka_health_series_names,
    metric_names,
    read_yaml,
    substitute_grafana_variables,
    ui_series_names,
    with_bool_comparisons,
)
from tests.deploy_expressions import RULES as RULES_FILE
from tests.integration.test_pipeline import _corrupt_frames

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(3600)]

REPLICAS = 2
FRAMES_PARTITIONS = 12  # docker-compose.yml's default
APP_UID = 10001
PRODUCER_CAMERA = "cam-1"
LINE_FILE = REPO_ROOT / "deploy" / "sorter" / "line.compose.yaml"  # the sorter's, mounted by docker-compose.yml


def _healthy(expected: dict[str, int]) -> list[Container] | None:
    """Every service up as docker-compose.yml means it, or None: health checks healthy, kafka-init exited 0."""
    found = containers()
    for service, count in expected.items():
        mine = [c for c in found if c.service == service]
        if service == "kafka-init":
            ok = len(mine) == 1 and mine[0].state == "exited" and mine[0].exit_code == 0
        elif service == "producer":  # no health check: the image's /healthz is the worker's
            ok = len(mine) == count and all(c.state == "running" for c in mine)
        else:
            ok = len(mine) == count and all(c.state == "running" and c.health == "healthy" for c in mine)
        if not ok:
            return None
    return found


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    cluster = bool(request.config.getoption("--cluster"))
    figures: dict[str, Any] = {"variant": "cluster" if cluster else "single broker"}
    started = time.monotonic()
    figures["build_s"] = {step: round(s, 1) for step, s in build_images().items()}
    figures["build_total_s"] = round(time.monotonic() - started, 1)
    figures["image_mb"] = {name: round(image_size_mb(name)) for name in (INSPECTOR, KAFKA, PROMETHEUS)}
    kafka_port, prometheus_port = free_port(), free_port()
    variables = {
        "INSPECTOR_IMAGE": INSPECTOR, "KAFKA_IMAGE": KAFKA, "PROMETHEUS_IMAGE": PROMETHEUS,
        "KAFKA_HOST_PORT": str(kafka_port), "PROMETHEUS_PORT": f"127.0.0.1:{prometheus_port}",
        "PRODUCER_FPS": "10",  # two replicas, the broker and the camera share this machine's 2 cores
    }
    bootstrap = f"127.0.0.1:{kafka_port}"
    if cluster:
        others = {"KAFKA_2_HOST_PORT": str(free_port()), "KAFKA_3_HOST_PORT": str(free_port())}
        variables.update(others)
        bootstrap = ",".join([bootstrap, *(f"127.0.0.1:{port}" for port in others.values())])
    with podman_service() as docker_host, HealthTicker():
        compose = Compose(docker_host, variables, CLUSTER_FILES if cluster else COMPOSE_FILES)
        compose("down", "--volumes", "--remove-orphans")  # what an interrupted run left
        stack = Stack(compose, bootstrap, f"http://127.0.0.1:{prometheus_port}", figures, cluster)
        try:
            started = time.monotonic()
            compose("up", "--detach", "--no-build", "--pull", "never", "--scale", f"inspector={REPLICAS}",
                    *stack.services)
            expected = {service: REPLICAS if service == "inspector" else 1 for service in stack.services}
            wait_until("every service healthy", lambda: _healthy(expected), timeout_s=900)
            figures["up_to_healthy_s"] = round(time.monotonic() - started, 1)
            yield stack
        finally:
            for c in containers():
                save_logs(c, LOGS / f"{c.name}.log")
            compose("down", "--volumes", "--remove-orphans", "--timeout", "30")
            (WORK / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")


def test_every_service_is_healthy(stack: Stack) -> None:
    services = {c.service for c in containers()}
    assert services == set(stack.services), services
    assert len(service_containers("inspector")) == REPLICAS


@pytest.mark.usefixtures("stack")
def test_worker_containers_run_as_the_app_user() -> None:
    for container in [*service_containers("inspector"), *service_containers("producer"),
                      *service_containers("standin-plc"), *service_containers("sorter")]:
        uids = process_uids(container)
        assert uids, container.name
        assert set(uids.values()) == {APP_UID}, (container.name, uids)


def test_alerts_arrive_on_the_host_port_and_parse(stack: Stack) -> None:
    consumer = KafkaConsumer("defect-alerts", bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    alerts: list[Alert] = []

    def some_alerts() -> bool:
        alerts.extend(Alert.model_validate_json(message.value) for message in consumer)
        return len(alerts) >= 3

    try:
        wait_until("3 alerts on defect-alerts", some_alerts, timeout_s=300, every_s=0)
    finally:
        consumer.close()
    assert {a.camera_id for a in alerts} == {PRODUCER_CAMERA}
    assert all(a.score > a.threshold for a in alerts)


def test_an_ejection_reaches_the_standin_plc(stack: Stack) -> None:
    """The synthetic camera's defects (5 % of its frames) become pulses on the coil of its lane."""
    line = load_line(LINE_FILE)
    camera = line.camera(PRODUCER_CAMERA)
    assert camera is not None
    actuator = line.lane(camera.lane).actuator
    assert isinstance(actuator, ModbusConfig)
    (plc,) = service_containers("standin-plc")
    wait_until(f"'coil {actuator.coil} on' in the standin-plc log",
               lambda: f"coil {actuator.coil} on" in container_log(plc), timeout_s=300)
    pulses = f'sum(inspector_sorter_pulses_total{{job="sorter",lane="{camera.lane}"}}) > 0'
    fired = f'sum(inspector_sorter_ejections_total{{job="sorter",lane="{camera.lane}",outcome="fired"}}) > 0'
    wait_until(f"{pulses} and {fired} in Prometheus", lambda: stack.series(pulses) and stack.series(fired),
               timeout_s=60)
    assert stack.series('inspector_sorter_actuator_up{job="sorter"} == 1')
    stack.figures["sorter_pulses"] = float(stack.series(pulses)[0]["value"][1])


def _instances() -> dict[str, str]:
    """Prometheus instance (ip:9400) -> container name, for the running replicas."""
    return {f"{c.ip}:9400": c.name for c in service_containers("inspector")}


def _partitions_by_instance(stack: Stack) -> dict[str, int]:
    return {s["metric"]["instance"]: int(float(s["value"][1]))
            for s in stack.series('inspector_assigned_partitions{job="inspector"}')}


def _stimulus(stack: Stack) -> None:
    """What a healthy camera never sends, so that every panel has data: bad records (dead letters), frames past
    their deadline, and a model file that changes under one replica (a hot reload)."""
    bad = Publisher(stack.kafka(), ProducerSettings(camera_id="cam-bad", fps=0))
    late_settings = ProducerSettings(camera_id="cam-late", fps=0, deadline_ms=1, seed=3)
    late = Publisher(stack.kafka(), late_settings)
    late_frames = planned_stream(late_settings, n_frames=12, n_defects=0)
    first = service_containers("inspector")[0]
    # In two bursts, a few scrapes apart: a counter that appears and never grows has rate 0 (and 0/0 is NaN).
    for burst in (late_frames[:6], late_frames[6:]):
        _corrupt_frames(bad)
        late.publish(ListSource(burst))
        time.sleep(12)
    podman("exec", "--user", "0", first.id, "touch", "/app/models/banana-ae-v1.safetensors")
    assert bad.stats.failed == 0 and late.stats.failed == 0
    bad.close()
    late.close()


def test_prometheus_scrapes_both_replicas_and_every_query_has_data(stack: Stack) -> None:
    instances = _instances()
    assert len(instances) == REPLICAS

    def both_up() -> bool:
        up = {s["metric"]["instance"]: s["value"][1] for s in stack.series('up{job="inspector"}')}
        return up == dict.fromkeys(instances, "1")

    wait_until(f"both replicas up in Prometheus ({sorted(instances)})", both_up, timeout_s=120)

    _stimulus(stack)
    with _late_camera_sending(stack):
        stimulated = ["sum(inspector_frames_dead_lettered_total) >= 10",
                      'sum(inspector_deadline_missed_total{camera="cam-late"}) > 0',
                      'sum(inspector_model_reloads_total{result="ok"}) >= 1']
        wait_until(f"the dead letters, late frames and reload in Prometheus: {stimulated}",
                   lambda: all(stack.series(e) for e in stimulated), timeout_s=120)
        _check_every_expression(stack)


@contextlib.contextmanager
def _late_camera_sending(stack: Stack) -> Iterator[None]:
    """cam-late goes on sending a frame every 2 s while the expressions are read: a camera silent for the 30 s of a
    rate() window has ratios of 0/0 (NaN), and waiting for the stimulus and reading every expression may take longer
    than that on a loaded host (the cluster variant's three brokers)."""
    settings = ProducerSettings(camera_id="cam-late", fps=0.5, deadline_ms=1, seed=5)
    source = ListSource(planned_stream(settings, n_frames=300, n_defects=0))
    publisher = Publisher(stack.kafka(), settings)
    sender = threading.Thread(target=publisher.publish, args=(source,), daemon=True)
    sender.start()
    try:
        yield
    finally:
        source.stop()
        sender.join(timeout=30)
        publisher.close()


def _check_every_expression(stack: Stack) -> None:
    """Every dashboard expression and rule of the stack's variant returns data, none of it NaN."""
    failures: list[str] = []
    nan: list[str] = []

    def check(kind: str, expr: str) -> None:
        result, error = stack.query(expr)
        if error or not result:
            failures.append(f"{kind}: {expr!r} -> {error or 'no data'}")
        nan.extend(f"{kind}: {expr!r} {s['metric']}" for s in result if math.isnan(float(s["value"][1])))

    # The operators' panels read `inspector ui`'s metrics; the UI is not in this stack (tests/integration/test_ui.py).
    # The Kafka health probe runs in the cluster variant only.
    elsewhere = [ui_series_names()] + ([] if stack.cluster else [kafka_health_series_names()])
    for expr in dashboard_expressions():
        if not any(metric_names(expr) <= names for names in elsewhere):
            check("dashboard", substitute_grafana_variables(expr, GRAFANA_SUBSTITUTES))
    for group in read_yaml(RULES_FILE)["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in KAFKA_ALERTS and not stack.cluster:
                continue
            if "record" in rule:
                check("recording rule", str(rule["expr"]))
                check("recorded series", rule["record"])
            else:  # a healthy line meets no alert condition: `bool` keeps every series of the comparison
                check(f"alert {rule['alert']} (bool)", with_bool_comparisons(str(rule["expr"])))
    assert not failures, "expressions without data:\n" + "\n".join(failures)
    assert not nan, "NaN results:\n" + "\n".join(nan)


def test_a_killed_partition_leader_loses_no_acknowledged_frame(stack: Stack) -> None:
    """The cluster variant: a camera publishes (acks=all) while the broker leading its partition of `frames` is
    killed and restarted; every frame it was told was written is scored, and the probe's under-replicated gauge
    rises in Prometheus while the broker is gone and falls back to 0 once it has caught up."""
    if not stack.cluster:
        pytest.skip("the single broker has no replica to fail over to: `make test-compose CLUSTER=1`")
    zero = "sum(inspector_kafka_under_replicated_partitions)"
    wait_until("the probe seeing 3 brokers and nothing under-replicated",
               lambda: stack.prometheus_value("max(inspector_kafka_brokers)") == 3
               and stack.prometheus_value(zero) == 0, timeout_s=180)

    camera = ProducerSettings(camera_id="cam-failover", fps=5, seed=11)
    frames = planned_stream(camera, n_frames=220, n_defects=0)
    publisher = Publisher(stack.kafka(), camera)
    # 1. A first burst shows which partition the camera's key lands on, and so which broker leads it.
    first = 20
    publisher.publish(ListSource(frames[:first]))
    publisher.flush(60)
    partition = next(r.partition for r in stack.read_all("frames") if r.key == camera.camera_id.encode())
    leader = stack.frames_leaders()[partition]
    (victim,) = service_containers(f"kafka-{leader}")
    stack.figures["killed_broker"] = {"container": victim.name, "frames_partition": partition}

    # 2. The rest of the frames while the leader is killed, then restarted.
    rest = threading.Thread(target=publisher.publish, args=(ListSource(frames[first:]),),
                            kwargs={"sequence_start": first}, daemon=True)
    rest.start()
    time.sleep(5)
    killed_at = time.monotonic()
    podman("kill", victim.id)
    new_leader = wait_until(f"a new leader for frames-{partition}",
                            lambda: stack.new_leader(partition, leader), timeout_s=120)
    stack.figures["failover_s"] = round(time.monotonic() - killed_at, 1)
    stack.figures["new_leader"] = new_leader
    peak = wait_until(f"{zero} > 0 in Prometheus", lambda: stack.prometheus_value(zero), timeout_s=120)
    stack.figures["under_replicated_seen_after_s"] = round(time.monotonic() - killed_at, 1)
    stack.figures["under_replicated_partitions"] = peak
    stack.figures["brokers_while_killed"] = stack.prometheus_value("max(inspector_kafka_brokers)")

    podman("start", victim.id)  # a no-op if its restart policy brought it back already
    restarted_at = time.monotonic()
    rest.join(timeout=300)
    assert not rest.is_alive(), "the camera's frames were not all sent within 5 minutes"
    publisher.flush(120)
    wait_until(f"{zero} back to 0 with 3 brokers",
               lambda: stack.prometheus_value(zero) == 0
               and stack.prometheus_value("max(inspector_kafka_brokers)") == 3, timeout_s=300)
    stack.figures["caught_up_after_restart_s"] = round(time.monotonic() - restarted_at, 1)
    stats = publisher.stats
    publisher.close()
    assert stats.failed == 0 and stats.dropped == 0, stats
    assert stats.acked == len(frames), stats

    # 3. Every acknowledged frame is in the log, and the workers score every one of them (the synthetic camera
    #    goes on publishing, so the group's lag is never 0 for long: the camera's own frames are what is awaited).
    written = {header_value(r.headers, "frame-id") for r in stack.read_all("frames")
               if r.key == camera.camera_id.encode()}
    assert len(written) == stats.acked, f"{stats.acked} frames acknowledged, {len(written)} in the log"
    missing: set[str] = set(written)

    def all_scored() -> bool:
        missing.difference_update(FrameScore.model_validate_json(r.value).frame_id
                                  for r in stack.read_all("frame-scores"))
        return not missing

    try:
        wait_until("every acknowledged frame of the camera scored", all_scored, timeout_s=300, every_s=10)
    except AssertionError:
        raise AssertionError(f"{len(missing)} of {len(written)} acknowledged frames never scored, "
                             f"e.g. {sorted(missing)[:5]}") from None
    stack.figures["failover_frames_checked"] = len(written)


def test_replicas_share_the_partitions_and_one_takes_over_when_the_other_is_killed(stack: Stack) -> None:
    instances = _instances()

    def shared() -> dict[str, int] | None:
        held = _partitions_by_instance(stack)
        ok = set(held) == set(instances) and all(held.values()) and sum(held.values()) == FRAMES_PARTITIONS
        return held if ok else None

    held = wait_until("both replicas holding partitions", shared, timeout_s=120)
    stack.figures["partitions_before_kill"] = {instances[i]: n for i, n in held.items()}

    victim, survivor = sorted(instances, key=instances.__getitem__)
    podman("kill", instances[victim])
    wait_until(f"{instances[survivor]} holding all {FRAMES_PARTITIONS} partitions",
               lambda: _partitions_by_instance(stack).get(survivor) == FRAMES_PARTITIONS, timeout_s=180)

    # The camera stops; the group drains what is left (the killed replica's uncommitted batch included).
    stack.compose("stop", "producer")
    (producer,) = service_containers("producer", running=False)
    assert producer.exit_code == 0, f"the producer did not stop cleanly on SIGTERM: exit {producer.exit_code}"
    wait_until("the inspector group to commit every frame", lambda: stack.lag() == 0, timeout_s=600, every_s=5)

    sent = {header_value(r.headers, "frame-id") for r in stack.read_all("frames") if r.key == PRODUCER_CAMERA.encode()}
    scored = {FrameScore.model_validate_json(r.value).frame_id for r in stack.read_all("frame-scores")}
    assert len(sent) > 100, len(sent)
    missing = sent - scored
    assert not missing, f"{len(missing)} of {len(sent)} frames never scored, e.g. {sorted(missing)[:5]}"
    stack.figures["frames_checked"] = len(sent)


def test_down_leaves_no_container_network_or_volume(stack: Stack) -> None:
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30")
    assert containers() == []
    networks = podman("network", "ls", "--format", "{{.Name}}").split()
    volumes = podman("volume", "ls", "--format", "{{.Name}}").split()
    assert [n for n in networks if n.startswith(f"{PROJECT}_")] == []
    assert [v for v in volumes if v.startswith(f"{PROJECT}_")] == []
    print(f"\ncompose stack figures: {json.dumps(stack.figures)}")
