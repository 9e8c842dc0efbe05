"""Workers that die or come and go on a real broker: SIGKILL mid-stream, SIGTERM under load, members joining and
leaving, and exactly-once under kills with its cost."""

from __future__ import annotations

import threading
import time

import pytest

from inspector.stream.worker import MAX_UNACKNOWLEDGED
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from .conftest import TopicReader, committed_offsets, producer_settings
from .fault_scenarios import (
    camera_on_partition,
    kill_restart_run,
    metric,
    new_topics,
    publish_planned,
    score_ids,
    summary,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


# ---- workers killed mid-stream --------------------------------------------------------------------------


def test_sigkilled_workers_lose_nothing_and_duplicate_only_uncommitted_batches(topics, start_worker, reader,
                                                                             capsys):
    n, kills, batch = 480, 3, 8
    env = {"INSPECTOR_BATCH__MAX_SIZE": str(batch), "INSPECTOR_KAFKA__SESSION_TIMEOUT_MS": "6000"}
    run = kill_restart_run(topics, start_worker, reader, n=n, kills=kills, seed=31, camera="cam-k", env=env)
    ids, labels = run["ids"], run["labels"]

    assert set(ids) == set(labels), f"lost {len(set(labels) - set(ids))} frames"
    duplicated = sum(ids.values()) - len(ids)
    # Uncommitted when the kill lands: the batches published and awaiting acknowledgement (MAX_UNACKNOWLEDGED + 1
    # while the newest is sent) and the one whose commit was sent without waiting (inspector.stream.worker).
    per_kill = (MAX_UNACKNOWLEDGED + 2) * batch
    assert duplicated <= kills * per_kill, f"{duplicated} duplicate scores after {kills} kills"
    # Every verdict "defect" reached the alerts topic, and alerts carry the frames' ground truth.
    assert run["alerted"] <= set(run["alert_ids"])
    assert all(run["alert_labels"][f] == labels[f] for f in run["alert_ids"])
    defects = {f for f, label in labels.items() if label != "good"}
    alerted_defects = defects & set(run["alert_ids"])
    assert defects & run["alerted"] == alerted_defects
    # The default model alerts on about 80 % of the synthetic camera's defective frames at its 1 % false-alarm
    # threshold (bench/RESULTS.md, "Honest thresholds"); this floor only proves that alerts flow through the kills.
    assert len(alerted_defects) >= 0.6 * len(defects), f"{len(alerted_defects)} of {len(defects)} defects alerted"
    summary(capsys, "worker-sigkill", runs=kills + 1, kills=kills, sent=n, scored=len(ids),
             lost=len(set(labels) - set(ids)), duplicated=duplicated,
             alert_duplicates=sum(run["alert_ids"].values()) - len(run["alert_ids"]),
             defects_alerted=f"{len(alerted_defects)}/{len(defects)}", dead_lettered=0)


# ---- SIGTERM under load ---------------------------------------------------------------------------------


def test_sigterm_under_load_commits_and_the_successor_continues_without_gap(topics, start_worker, reader,
                                                                            capsys):
    n, stops = 360, 2
    frames = planned_stream(producer_settings(seed=81), n_frames=n, n_defects=8)
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-t", fps=30))
    publishing = threading.Thread(target=publisher.publish, args=(ListSource(frames),), daemon=True)
    env = {"INSPECTOR_BATCH__MAX_SIZE": "8"}
    worker = start_worker(topics, **env)
    publishing.start()
    scores = reader(topics.scores)
    stop_s = []
    for k in range(stops):
        scores.until(lambda rs, k=k: len(score_ids(rs)) >= (k + 1) * n // (stops + 2), timeout_s=120)
        t0 = time.monotonic()
        assert worker.terminate(timeout_s=60) == 0
        stop_s.append(time.monotonic() - t0)
        committed = sum(committed_offsets(topics.bootstrap, topics.group, topics.frames)[0].values())
        # Everything scored is committed and nothing more: the topic holds exactly one score per committed frame.
        scores.until(lambda rs, done=committed: len(rs) >= done, timeout_s=30)
        scores.until(lambda _rs: False, timeout_s=1)
        ids = score_ids(scores.records)
        assert committed == len(scores.records) == len(ids) < n, (committed, len(scores.records))
        worker = start_worker(topics, **env)
    publishing.join(timeout=120)
    scores.until(lambda rs: len(score_ids(rs)) >= n, timeout_s=180)
    ids = score_ids(scores.records)
    assert set(ids) == {f"cam-t-{publisher._run_id}-{i}" for i in range(n)}
    assert len(scores.records) == n, f"{len(scores.records) - n} duplicates after graceful stops"
    assert worker.terminate() == 0
    publisher.close()
    summary(capsys, "sigterm", runs=stops + 1, stops=stops, sent=n, scored=len(ids), lost=n - len(ids),
             duplicated=len(scores.records) - len(ids), dead_lettered=0,
             stop_seconds="/".join(f"{s:.1f}" for s in stop_s))


# ---- members joining and leaving mid-stream --------------------------------------------------------------


@pytest.mark.parametrize(("transport", "exactly_once"), [("kafka-python", False), ("confluent", False),
                                                        ("kafka-python", True), ("confluent", True)])
def test_members_joining_and_leaving_mid_stream_lose_nothing(topics, start_worker, reader, capsys, transport,
                                                             exactly_once):
    """A rebalance drops the batch in hand; every assignment reads again from the committed offset, also that of
    a partition the member kept (test_transports.py), so nothing is skipped and, with exactly-once, nothing is
    scored twice."""
    if transport == "confluent":
        pytest.importorskip("confluent_kafka")
    labels: dict[str, str] = {}
    for i, camera in enumerate(camera_on_partition(p, partitions=2) for p in range(2)):
        labels.update(publish_planned(topics, 150, 90 + i, camera)[1])
    n = len(labels)
    # Slow scoring (40 ms a frame) keeps a batch in hand whenever the group rebalances.
    env = {"INSPECTOR_BATCH__MAX_SIZE": "8", "INSPECTOR_FAULTS__SCORE_DELAY_MS": "40",
           "INSPECTOR_KAFKA__TRANSPORT": transport, "INSPECTOR_KAFKA__EXACTLY_ONCE": str(exactly_once).lower()}
    scores = reader(topics.scores)
    first = start_worker(topics, **env)
    scores.until(lambda rs: len(score_ids(rs)) >= 40, timeout_s=120)
    second = start_worker(topics, **env)  # rebalance 1: the first keeps one partition
    scores.until(lambda rs: len(score_ids(rs)) >= n // 2, timeout_s=120)
    assert len(score_ids(scores.records)) < n, "the backlog drained before the second member left"
    assert second.terminate() == 0  # rebalance 2: the first keeps its partition and takes the other back
    scores.until(lambda rs: len(score_ids(rs)) >= n, timeout_s=180)
    scores.until(lambda _rs: False, timeout_s=2)
    ids = score_ids(scores.records)
    lost = set(labels) - set(ids)
    duplicated = sum(ids.values()) - len(ids)
    assert first.terminate() == 0
    assert not lost, f"lost {len(lost)} frames across 2 rebalances"
    assert duplicated <= (0 if exactly_once else 2 * 2 * 8), f"{duplicated} duplicates across 2 rebalances"
    summary(capsys, f"rebalance-{transport}{'-eos' if exactly_once else ''}", rebalances=2, sent=n, scored=len(ids), lost=len(lost), duplicated=duplicated,
             dead_lettered=0)


# ---- exactly-once ------------------------------------------------------------------------------------------


def _throughput(bootstrap: str, start_worker, frames: list, env: dict[str, str]) -> tuple[float, float]:
    """(frames per second through a backlog, from the score records' timestamps; ms per batch spent publishing
    and committing, from the worker's stage histogram)."""
    t = new_topics(bootstrap, "tput")
    publisher = Publisher(t.kafka_settings(), producer_settings(camera_id="cam-x"))
    publisher.publish(ListSource(frames))
    publisher.close()
    reader = TopicReader(bootstrap, t.scores)
    try:
        worker = start_worker(t, **env)
        reader.until(lambda rs: len(rs) >= len(frames), timeout_s=180)
        stage = 'inspector_stage_duration_seconds_{}{{stage="{}"}}'
        spent = sum(metric(worker, stage.format("sum", name)) for name in ("publish", "commit"))
        batches = metric(worker, stage.format("count", "commit"))
        assert worker.terminate() == 0
        stamps = sorted(r.timestamp for r in reader.records)
        return (len(stamps) - 1) / max(1e-3, (stamps[-1] - stamps[0]) / 1000), 1000 * spent / max(1.0, batches)
    finally:
        reader.close()


@pytest.mark.parametrize("transport", ["kafka-python", "confluent"])
def test_exactly_once_under_kills_and_its_cost(topics, start_worker, reader, kafka_broker, capsys, transport):
    if transport == "confluent":
        pytest.importorskip("confluent_kafka")
    n, kills, batch = 480, 3, 8
    eos = {"INSPECTOR_KAFKA__EXACTLY_ONCE": "true", "INSPECTOR_KAFKA__TRANSPORT": transport,
           # A stable transactional id, as one replica slot would have: the restarted worker fences its killed
           # predecessor and aborts its open transaction at once (otherwise read_committed readers wait for the
           # transaction timeout).
           "INSPECTOR_KAFKA__TRANSACTIONAL_ID": f"{topics.group}-slot-0"}
    env = {"INSPECTOR_BATCH__MAX_SIZE": str(batch), "INSPECTOR_KAFKA__SESSION_TIMEOUT_MS": "6000", **eos}
    run = kill_restart_run(topics, start_worker, reader, n=n, kills=kills, seed=91, camera="cam-e", env=env)
    ids, labels = run["ids"], run["labels"]
    assert set(ids) == set(labels), f"lost {len(set(labels) - set(ids))} frames"
    assert sum(ids.values()) == len(ids), f"{sum(ids.values()) - len(ids)} duplicate scores under exactly-once"
    assert sum(run["alert_ids"].values()) == len(run["alert_ids"]), "duplicate alerts under exactly-once"
    assert run["alerted"] == set(run["alert_ids"])

    # The cost: the same backlog through a worker without and with transactions (default batch size).
    frames = planned_stream(producer_settings(seed=92), n_frames=400, n_defects=10)
    fps, ms = {}, {}
    for name, extra in (("at-least-once", {}), ("exactly-once", {"INSPECTOR_KAFKA__EXACTLY_ONCE": "true"})):
        fps[name], ms[name] = _throughput(kafka_broker.bootstrap_servers, start_worker, frames,
                                          {**extra, "INSPECTOR_KAFKA__TRANSPORT": transport})
    summary(capsys, f"exactly-once-{transport}", runs=kills + 1, kills=kills, sent=n, scored=len(ids),
             lost=len(set(labels) - set(ids)), duplicated=sum(ids.values()) - len(ids),
             alert_duplicates=sum(run["alert_ids"].values()) - len(run["alert_ids"]), dead_lettered=0,
             fps_at_least_once=round(fps["at-least-once"], 1), fps_exactly_once=round(fps["exactly-once"], 1),
             publish_commit_ms_per_batch=f'{ms["at-least-once"]:.1f}/{ms["exactly-once"]:.1f}')
