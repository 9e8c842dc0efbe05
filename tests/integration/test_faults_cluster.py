"""A replicated cluster (three KRaft nodes, replication factor 3, min in-sync replicas 2) under a 30 fps camera with
defects and real workers: the leader of a frames partition killed or stopped five times, every broker killed in
turn under transactions, two of three brokers down, and a worker host lost while a broker is down. Every
acknowledged frame is scored, every defect verdict reaches the alerts topic, and with exactly-once nothing is
scored twice (Kafka's own `replication_test.py` bar, with frames, scores and alerts).

A transactional worker whose transaction coordinator dies may stop (kafka-python loses the request; the worker
gives up after the delivery timeout): the run restarts it as its supervisor would, and counts the restarts."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from inspector.kafka.kafka_python.clients import create_topics
from inspector.kafka.local_broker import LocalKafka, LocalKafkaCluster
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from .conftest import TopicReader, Topics, WorkerProcess, producer_settings
from .fault_scenarios import camera_on_partition, metric, parse_alerts, parse_scores, score_ids, summary

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FPS = 30


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    with LocalKafkaCluster(3, data_dir=tmp_path_factory.mktemp("kafka-cluster")) as cluster:
        yield cluster


@pytest.fixture()
def cluster_topics(kafka_cluster: LocalKafkaCluster) -> Topics:
    tag = uuid.uuid4().hex[:8]
    t = Topics(kafka_cluster.bootstrap_servers, f"frames-c{tag}", f"alerts-c{tag}", f"scores-c{tag}", f"dlq-c{tag}",
               f"group-c{tag}", f"evidence-c{tag}", f"feedback-c{tag}")
    settings = t.kafka_settings(replication_factor=kafka_cluster.replication_factor,
                                min_insync_replicas=kafka_cluster.min_insync_replicas)
    create_topics(settings, {t.frames: 2, t.alerts: 1, t.scores: 1, t.dlq: 1, t.evidence: 1})
    return t


def wait_for_leader(cluster: LocalKafkaCluster, topic: str, partition: int, *, not_on: int,
                    timeout_s: float = 60) -> float:
    """Seconds until a running broker other than `not_on` leads the partition."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cluster.leader_of(topic, partition) not in (not_on, -1):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"no new leader for {topic}/{partition} in {timeout_s:.0f}s")


@dataclass
class LineRun:
    """A 30 fps camera publishing a planned stream into the cluster while the test injects faults."""

    cluster: LocalKafkaCluster
    topics: Topics
    start_worker: Callable[..., WorkerProcess]
    env: dict[str, str]
    n: int
    seed: int
    camera: str = ""
    workers: list[WorkerProcess] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    resume_s: list[float] = field(default_factory=list)
    restarts: int = 0

    def __post_init__(self) -> None:
        self.camera = self.camera or camera_on_partition(0, partitions=2)
        frames = planned_stream(producer_settings(seed=self.seed), n_frames=self.n, n_defects=self.n // 20)
        self.publisher = Publisher(self.topics.kafka_settings(),
                                   producer_settings(camera_id=self.camera, fps=FPS))
        self.labels = {f"{self.camera}-{self.publisher._run_id}-{i}": f.label for i, f in enumerate(frames)}
        self._publishing = threading.Thread(target=self._publish, args=(frames,), daemon=True)
        self.scores = TopicReader(self.topics.bootstrap, self.topics.scores)
        self.stats = None

    def _publish(self, frames: list) -> None:
        self.stats = self.publisher.publish(ListSource(frames))

    def start(self, workers: int = 1) -> LineRun:
        self.workers = [self._start(slot) for slot in range(workers)]
        self._publishing.start()
        return self

    def _start(self, slot: int) -> WorkerProcess:
        """Worker `slot`, with a transactional id of its slot's (stable across restarts, so that a successor fences
        what its predecessor left open)."""
        return self.start_worker(self.topics, **{"INSPECTOR_KAFKA__TRANSACTIONAL_ID": f"{self.topics.group}-{slot}",
                                                 **self.env})

    def scored(self) -> int:
        """Frames scored so far; a worker that exited is restarted, as its supervisor (compose, systemd) would."""
        for slot, worker in enumerate(self.workers):
            if worker.proc.poll() is not None:
                self.restarts += 1
                self.workers[slot] = self._start(slot)
        self.scores.poll(0.2)
        return len(score_ids(self.scores.records))

    def until_scored(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.scored() < count and time.monotonic() < deadline:
            pass

    def bounce(self, node: LocalKafka, *, hard: bool, down_s: float = 0.0) -> None:
        """Kill (SIGKILL) or stop (SIGTERM) a broker, wait until the partition has a new leader, restart it."""
        (node.kill if hard else node.stop)()
        self.resume_s.append(wait_for_leader(self.cluster, self.topics.frames, 0, not_on=node.node_id))
        time.sleep(down_s)
        node.start()

    def finish(self, capsys: pytest.CaptureFixture, scenario: str, *, exactly_once: bool, **extra: object) -> dict:
        """Drain, check nothing acknowledged was lost, print the FAULTS line; the counts for further checks."""
        self._publishing.join(timeout=300)
        assert self.stats is not None, "the camera did not finish publishing"
        assert self.stats.failed == 0 and self.stats.dropped == 0, self.stats
        self.until_scored(self.n, timeout_s=240)
        self.scores.until(lambda _rs: False, timeout_s=2)
        ids = score_ids(self.scores.records)
        alerted = {s.frame_id for s in parse_scores(self.scores.records) if s.alert}
        alerts = TopicReader(self.topics.bootstrap, self.topics.alerts)
        alerts.until(lambda rs: alerted <= {a.frame_id for a in parse_alerts(rs)}, timeout_s=60)
        alert_ids = Counter(a.frame_id for a in parse_alerts(alerts.records))
        given_up = 0.0
        for worker in self.workers:
            if worker.proc.poll() is None:
                given_up += metric(worker, "inspector_transactions_given_up_total")
                assert worker.terminate() == 0
        self.publisher.close()
        self.scores.close()
        alerts.close()
        lost = set(self.labels) - set(ids)
        duplicated = sum(ids.values()) - len(ids)
        defects = {f for f, label in self.labels.items() if label != "good"}
        resume = sorted(self.resume_s)
        summary(capsys, scenario, sent=self.n, acked=self.stats.acked, scored=len(ids), lost=len(lost),
                duplicated=duplicated, alerts_lost=len(alerted - set(alert_ids)),
                defects_alerted=f"{len(defects & set(alert_ids))}/{len(defects)}",
                resume_s_p50_max="-" if not resume else f"{resume[len(resume) // 2]:.1f}/{resume[-1]:.1f}",
                worker_restarts=self.restarts, transactions_given_up=int(given_up), **extra)
        assert not lost, f"{len(lost)} acknowledged frames were never scored"
        assert alerted <= set(alert_ids), f"{len(alerted - set(alert_ids))} defect verdicts never reached the alerts"
        if exactly_once:
            assert duplicated == 0, f"{duplicated} frames scored twice with exactly-once"
        return {"ids": ids, "duplicated": duplicated}


def _env(exactly_once: bool) -> dict[str, str]:
    # A worker whose transaction hangs gives it up after the delivery timeout (its frames are scored again); one
    # that stops (three in a row) is restarted (`LineRun.scored`).
    return {"INSPECTOR_BATCH__MAX_SIZE": "8", "INSPECTOR_KAFKA__EXACTLY_ONCE": str(exactly_once).lower(),
            "INSPECTOR_KAFKA__SESSION_TIMEOUT_MS": "6000", "INSPECTOR_KAFKA__DELIVERY_TIMEOUT_S": "15",
            "INSPECTOR_KAFKA__REQUEST_TIMEOUT_MS": "10000"}


# ---- the leader of a frames partition bounced five times ----------------------------------------------------


@pytest.mark.parametrize("exactly_once", [False, True],
                         ids=["at-least-once", "exactly-once"])
def test_the_frames_leader_killed_five_times_loses_nothing(kafka_cluster, cluster_topics, start_worker, capsys,
                                                           exactly_once):
    run = LineRun(kafka_cluster, cluster_topics, start_worker, _env(exactly_once), n=900, seed=271).start()
    for k in range(5):
        run.until_scored((k + 1) * run.n // 7)
        run.bounce(kafka_cluster.node(kafka_cluster.leader_of(cluster_topics.frames, 0)), hard=True)
    result = run.finish(capsys, f"cluster-hard-bounce{'-eos' if exactly_once else ''}", exactly_once=exactly_once,
                        bounces=5)
    # At-least-once: a worker resends only the batch whose acknowledgement a kill cut off.
    assert result["duplicated"] <= 5 * 8


def test_the_frames_leader_stopped_five_times_loses_nothing(kafka_cluster, cluster_topics, start_worker, capsys):
    run = LineRun(kafka_cluster, cluster_topics, start_worker, _env(False), n=900, seed=272).start()
    for k in range(5):
        run.until_scored((k + 1) * run.n // 7)
        run.bounce(kafka_cluster.node(kafka_cluster.leader_of(cluster_topics.frames, 0)), hard=False)
    result = run.finish(capsys, "cluster-clean-bounce", exactly_once=False, bounces=5)
    assert result["duplicated"] <= 5 * 8


# ---- the brokers the workers publish through ------------------------------------------------------------------



def test_every_broker_killed_in_turn_while_workers_publish_transactions(kafka_cluster, cluster_topics,
                                                                        start_worker, capsys):
    """Each broker in turn, so that the leaders of the alerts and scores topics, the group coordinator and the
    transaction coordinator are each killed once while the worker publishes."""
    run = LineRun(kafka_cluster, cluster_topics, start_worker, _env(True), n=600, seed=273).start()
    for k, node in enumerate(kafka_cluster.nodes):
        run.until_scored((k + 1) * run.n // 5)
        node.kill()
        time.sleep(4)  # past the broker session timeout: its partitions and coordinators have moved
        node.start()
    run.finish(capsys, "cluster-every-broker-killed-eos", exactly_once=True, kills=len(kafka_cluster.nodes))


# ---- below min ISR, and a worker host lost while a broker is down ------------------------------------------------


def test_two_of_three_brokers_down_blocks_without_losing_and_resumes(kafka_cluster, cluster_topics, start_worker,
                                                                     capsys):
    run = LineRun(kafka_cluster, cluster_topics, start_worker, _env(False), n=600, seed=274).start()
    run.until_scored(run.n // 4)
    survivor = kafka_cluster.leader_of(cluster_topics.frames, 0)
    down = [node for node in kafka_cluster.nodes if node.node_id != survivor]
    for node in down:
        node.kill()
    t0 = time.monotonic()
    before = run.scored()
    time.sleep(12)  # below min ISR: nothing may be acknowledged, so nothing new is committed or scored
    stalled = run.scored() - before
    down[0].start()
    run.until_scored(before + 1, timeout_s=120)
    run.resume_s.append(time.monotonic() - t0)
    down[1].start()
    run.finish(capsys, "cluster-two-of-three-down", exactly_once=False, scored_while_below_min_isr=stalled)
    # A record needs two in-sync replicas: with one broker left, at most the batch already acknowledged lands.
    assert stalled <= 8


def test_a_worker_host_lost_while_a_broker_is_down(kafka_cluster, cluster_topics, start_worker, capsys):
    run = LineRun(kafka_cluster, cluster_topics, start_worker, _env(False), n=600, seed=275).start(workers=2)
    run.until_scored(run.n // 3)
    broker = kafka_cluster.node(kafka_cluster.leader_of(cluster_topics.frames, 0))
    broker.kill()
    run.resume_s.append(wait_for_leader(kafka_cluster, cluster_topics.frames, 0, not_on=broker.node_id))
    for worker in run.workers:  # the host of both workers goes away with them
        worker.kill()
    run.workers = [run._start(0)]  # a replacement, while the broker is still down
    run.until_scored(2 * run.n // 3)
    broker.start()
    run.finish(capsys, "cluster-worker-host-lost-broker-down", exactly_once=False, workers_killed=2)
