"""`inspector serve --processes 2` on a real broker: two group members behind one endpoint, one of them SIGKILLed
while frames flow and restarted, nothing lost, and a SIGTERM that stops them all."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from .conftest import producer_settings
from .fault_scenarios import camera_on_partition, metric, new_topics, score_ids, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS, FRAMES_PER_CAMERA = 4, 150


def test_a_killed_worker_process_is_restarted_and_loses_nothing(kafka_broker, start_worker, reader):
    topics = new_topics(kafka_broker.bootstrap_servers, "procs", frames_partitions=PARTITIONS)
    env = {"INSPECTOR_MODEL__NULL": "true", "INSPECTOR_BATCH__MAX_SIZE": "8",
           "INSPECTOR_KAFKA__SESSION_TIMEOUT_MS": "6000", "INSPECTOR_WORKERS__RESTART_MIN_S": "0.5"}
    supervisor = start_worker(topics, serve_args=("--processes", "2"), **env)
    assigned = 'inspector_assigned_partitions{{worker="{}"}}'
    wait_for(lambda: all(metric(supervisor, assigned.format(w)) > 0 for w in "01"), 60, "both workers assigned")
    pids = {w: int(metric(supervisor, f'inspector_worker_pid{{worker="{w}"}}')) for w in "01"}

    # One camera per partition, so that both workers score frames all along.
    cameras = [camera_on_partition(p, partitions=PARTITIONS) for p in range(PARTITIONS)]
    publishers = [Publisher(topics.kafka_settings(), producer_settings(camera_id=camera, fps=20)) for camera in cameras]
    streams = [planned_stream(producer_settings(seed=40 + i), FRAMES_PER_CAMERA, 0) for i in range(PARTITIONS)]
    threads = [threading.Thread(target=publisher.publish, args=(ListSource(frames),), daemon=True)
               for publisher, frames in zip(publishers, streams)]
    for thread in threads:
        thread.start()
    sent = {f"{publisher.settings.camera_id}-{publisher._run_id}-{i}"
            for publisher in publishers for i in range(FRAMES_PER_CAMERA)}
    scores = reader(topics.scores)
    scores.until(lambda rs: len(score_ids(rs)) >= len(sent) // 5, timeout_s=60)

    os.kill(pids["1"], signal.SIGKILL)
    restarts = 'inspector_worker_restarts_total{worker="1"}'
    wait_for(lambda: metric(supervisor, restarts) == 1, 30, "worker 1 restarted")
    supervisor.wait_ready(timeout_s=90)
    new_pid = int(metric(supervisor, 'inspector_worker_pid{worker="1"}'))
    assert new_pid not in (0, pids["1"])
    assert "was killed by SIGKILL" in supervisor.log()

    for thread in threads:
        thread.join(timeout=60)
    scores.until(lambda rs: set(score_ids(rs)) >= sent, timeout_s=120)
    assert not sent - set(score_ids(scores.records)), f"lost {len(sent - set(score_ids(scores.records)))} frames"
    assert metric(supervisor, restarts) == 1
    for publisher in publishers:
        publisher.close()

    assert supervisor.terminate(timeout_s=60) == 0
    assert not [pid for pid in (pids["0"], new_pid) if Path(f"/proc/{pid}").exists()], "a worker outlived its supervisor"
