"""Fault injection on a real broker: killed workers, a broker outage, poison frames, slow scoring, bad model
files, graceful stops, exactly-once under kills, and SASL/SCRAM. Each test prints one `FAULTS` summary line
(sent / scored / lost / duplicated / dead-lettered, and what is particular to it); RELIABILITY.md is filled
from them:

    .venv/bin/python -m pytest tests/integration/test_faults.py -q -p no:logging

The broker outage and SASL tests use a broker this module owns (`own_broker`), never the session one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaProducer
from safetensors.torch import save_file

from inspector.contracts import (
    DLQ_REASONS,
    H_DLQ_DETAIL,
    H_DLQ_ORIGIN,
    H_DLQ_REASON,
    Alert,
    FrameMeta,
    FrameScore,
)
from inspector.kafka.kafka_python import create_topics
from inspector.model import artifact as artifact_io
from inspector.settings import KafkaSettings
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from ..poison import MAX_FRAME_BYTES, Poison, draw_poison
from .conftest import TopicReader, Topics, committed_offsets, producer_settings, restartable_broker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SCRAM_USER, SCRAM_PASSWORD = "alice", "s3cret-Pa55word-9f2c"


# ---- helpers -------------------------------------------------------------------------------------------


def _summary(capsys: pytest.CaptureFixture, scenario: str, **counts: object) -> str:
    """One line per test, printed past pytest's capture so a passing run shows it too."""
    line = f"FAULTS {scenario}: " + " ".join(f"{k}={v}" for k, v in counts.items())
    with capsys.disabled():
        print(f"\n{line}", flush=True)
    return line


def _new_topics(bootstrap: str, tag: str) -> Topics:
    tag = f"{tag}-{uuid.uuid4().hex[:6]}"
    t = Topics(bootstrap, f"frames-{tag}", f"alerts-{tag}", f"scores-{tag}", f"dlq-{tag}", f"group-{tag}")
    create_topics(t.kafka_settings(), {t.frames: 2, t.alerts: 1, t.scores: 1, t.dlq: 1})
    return t


def _scores(records: list) -> list[FrameScore]:
    return [FrameScore.model_validate_json(r.value) for r in records]


def _ids(records: list) -> Counter:
    """frame id -> how many records carry it (a count > 1 is a duplicate)."""
    return Counter(s.frame_id for s in _scores(records))


def _wait_for(predicate, timeout_s: float, what: str, step_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _metric(worker, sample: str) -> float:
    """A sample's value from the worker's /metrics, e.g. 'inspector_model_reloads_total{result="ok"}'; 0 if absent."""
    for line in worker.metrics_text().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024  # type: ignore[union-attr]


def _publish(topics: Topics, n: int, seed: int, camera: str, defects: int = 0, **producer: object):
    """A planned stream published up front; (publisher, frame id -> ground-truth label)."""
    frames = planned_stream(producer_settings(seed=seed), n_frames=n, n_defects=defects)
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id=camera, **producer))
    stats = publisher.publish(ListSource(frames))
    assert stats.acked == n and stats.failed == 0
    return publisher, {f"{camera}-{publisher._run_id}-{i}": f.label for i, f in enumerate(frames)}


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A broker this module may stop and restart, with a SASL_PLAINTEXT/SCRAM-SHA-256 listener as well."""
    with restartable_broker(tmp_path_factory.mktemp("own-kafka"), scram_users={SCRAM_USER: SCRAM_PASSWORD}) as broker:
        yield broker


def _kill_restart_run(topics: Topics, start_worker, reader, *, n: int, kills: int, seed: int, camera: str,
                      env: dict[str, str]) -> dict:
    """Publish n frames, SIGKILL the worker `kills` times mid-stream (restarting it each time), drain."""
    _, labels = _publish(topics, n, seed, camera, defects=n // 20)
    scores = reader(topics.scores)
    worker = start_worker(topics, **env)
    for k in range(kills):
        target = (k + 1) * n // (kills + 2)
        scores.until(lambda rs, target=target: len(_ids(rs)) >= target, timeout_s=120)
        worker.kill()
        done = len(_ids(scores.records))
        assert target <= done < n, f"kill {k + 1} at {done}/{n} scored is not mid-stream"
        worker = start_worker(topics, **env)
    scores.until(lambda rs: len(_ids(rs)) >= n, timeout_s=180)
    ids = _ids(scores.records)
    alerted = {s.frame_id for s in _scores(scores.records) if s.alert}
    alerts = reader(topics.alerts)
    alerts.until(lambda rs: alerted <= {a.frame_id for a in _scores_as_alerts(rs)}, timeout_s=30)
    alert_ids = Counter(a.frame_id for a in _scores_as_alerts(alerts.records))
    assert worker.proc.poll() is None
    assert worker.terminate() == 0
    return {"labels": labels, "ids": ids, "alerted": alerted, "alert_ids": alert_ids,
            "alert_labels": {a.frame_id: a.label for a in _scores_as_alerts(alerts.records)}}


def _scores_as_alerts(records: list) -> list[Alert]:
    return [Alert.model_validate_json(r.value) for r in records]


# ---- 1. workers killed mid-stream --------------------------------------------------------------------------


def test_sigkilled_workers_lose_nothing_and_duplicate_at_most_a_batch_per_kill(topics, start_worker, reader,
                                                                                capsys):
    n, kills, batch = 480, 3, 8
    env = {"INSPECTOR_BATCH__MAX_SIZE": str(batch), "INSPECTOR_KAFKA__SESSION_TIMEOUT_MS": "6000"}
    run = _kill_restart_run(topics, start_worker, reader, n=n, kills=kills, seed=31, camera="cam-k", env=env)
    ids, labels = run["ids"], run["labels"]

    assert set(ids) == set(labels), f"lost {len(set(labels) - set(ids))} frames"
    duplicated = sum(ids.values()) - len(ids)
    # Only the batch being published when the kill lands is uncommitted: at most one batch per kill.
    assert duplicated <= kills * batch, f"{duplicated} duplicate scores after {kills} kills"
    # Every verdict "defect" reached the alerts topic, and alerts carry the frames' ground truth.
    assert run["alerted"] <= set(run["alert_ids"])
    assert all(run["alert_labels"][f] == labels[f] for f in run["alert_ids"])
    defects = {f for f, label in labels.items() if label != "good"}
    alerted_defects = defects & set(run["alert_ids"])
    assert defects & run["alerted"] == alerted_defects
    assert len(alerted_defects) >= 0.8 * len(defects), f"{len(alerted_defects)} of {len(defects)} defects alerted"
    _summary(capsys, "worker-sigkill", runs=kills + 1, kills=kills, sent=n, scored=len(ids),
             lost=len(set(labels) - set(ids)), duplicated=duplicated,
             alert_duplicates=sum(run["alert_ids"].values()) - len(run["alert_ids"]),
             defects_alerted=f"{len(alerted_defects)}/{len(defects)}", dead_lettered=0)


# ---- 2. the broker goes away and comes back ----------------------------------------------------------------


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_a_broker_outage_is_ridden_out_by_producer_and_worker(own_broker, start_worker, capsys, exactly_once):
    fps, down_s, after_s = 10.0, 20.0, 6.0
    topics = _new_topics(own_broker.bootstrap_servers, "outage")
    source = ListSource(planned_stream(producer_settings(seed=41), n_frames=1000, n_defects=20))
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-o", fps=fps))
    worker = start_worker(topics, INSPECTOR_BATCH__MAX_SIZE="8",
                          INSPECTOR_KAFKA__EXACTLY_ONCE=str(exactly_once).lower())
    publishing = threading.Thread(target=publisher.publish, args=(source,), daemon=True)
    publishing.start()
    scores = TopicReader(own_broker.bootstrap_servers, topics.scores)
    try:
        scores.until(lambda rs: len(_ids(rs)) >= 30, timeout_s=60)
        scored_before = len(_ids(scores.records))
        scores.close()
        sent_before = publisher.stats.sent
        own_broker.kill()  # SIGKILL: no controlled shutdown
        time.sleep(down_s)
        t_restart = time.monotonic()
        own_broker.start()
        restart_s = time.monotonic() - t_restart
        sent_down = publisher.stats.sent - sent_before  # while the broker was down or starting
        time.sleep(after_s)
        source.stop()  # the producer keeps going for a while after the broker is back, then ends
        publishing.join(timeout=90)
        assert not publishing.is_alive(), "the producer did not finish"
        n = publisher.stats.sent
        assert publisher.stats.acked == n and publisher.stats.failed == 0, publisher.stats

        scores = TopicReader(own_broker.bootstrap_servers, topics.scores)
        scores.until(lambda rs: len(_ids(rs)) >= n or worker.proc.poll() is not None, timeout_s=120)
        ids = _ids(scores.records)
        sent_ids = {f"cam-o-{publisher._run_id}-{i}" for i in range(n)}
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()}"
        assert set(ids) == sent_ids, f"lost {len(sent_ids - set(ids))} frames"
        assert sent_down > 0 and n - sent_before - sent_down > 0, "frames must be produced during and after"
        duplicated = sum(ids.values()) - len(ids)
        assert duplicated <= (0 if exactly_once else 2 * 8), f"{duplicated} duplicates from one outage"
        assert worker.terminate() == 0
    finally:
        scores.close()
        publisher.close()
    _summary(capsys, "broker-outage" + ("-eos" if exactly_once else ""), runs=1, down_s=down_s, restart_s=round(restart_s, 1), sent=n,
             sent_before=sent_before, sent_during=sent_down, sent_after=n - sent_before - sent_down,
             scored_before=scored_before, scored=len(ids), lost=len(sent_ids - set(ids)), duplicated=duplicated,
             dead_lettered=0)


# ---- 3. poison frames (tests/poison.py) --------------------------------------------------------


def test_poison_frames_are_dead_lettered_and_the_worker_stays_up(topics, start_worker, reader, capsys):
    poison = draw_poison(per_kind=5)
    np.random.default_rng(4).shuffle(poison)  # type: ignore[arg-type] - kinds mixed across both halves
    n_good = 120
    good = planned_stream(producer_settings(seed=51), n_frames=n_good, n_defects=0)
    worker = start_worker(topics, INSPECTOR_BATCH__MAX_SIZE="8",
                          INSPECTOR_LIMITS__MAX_FRAME_BYTES=str(MAX_FRAME_BYTES))
    rss = [_rss_mb(worker.proc.pid)]
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    run = uuid.uuid4().hex[:6]
    scores, dlq = reader(topics.scores), reader(topics.dlq)
    origins: dict[str, Poison] = {}
    rng = np.random.default_rng(5)
    half = len(poison) // 2
    for part, (goods, bads) in enumerate([(range(0, n_good // 2), poison[:half]),
                                          (range(n_good // 2, n_good), poison[half:])]):
        mixed = [("good", i) for i in goods] + [("bad", p) for p in bads]
        futures = []
        for j in rng.permutation(len(mixed)):
            what, item = mixed[j]
            if what == "good":
                meta = FrameMeta(frame_id=f"good-{run}-{item}", camera_id="cam-p", sequence=item,
                                 captured_ns=time.time_ns(), label="good")
                futures.append((None, producer.send(topics.frames, key=b"cam-p", value=good[item].jpeg,
                                                    headers=meta.to_headers())))
            else:
                futures.append((item, producer.send(topics.frames, key=item.key, value=item.value,
                                                    headers=item.headers)))
        producer.flush(timeout=60)
        for p, f in futures:
            md = f.get(timeout=10)
            if p is not None:
                origins[f"{topics.frames}/{md.partition}/{md.offset}"] = p
        n_scored = len(goods) + (part * n_good // 2)
        scores.until(lambda rs, want=n_scored: len(_ids(rs)) >= want or worker.proc.poll() is not None,
                     timeout_s=120)
        dlq.until(lambda rs: len(rs) >= len(origins) or worker.proc.poll() is not None, timeout_s=60)
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()}"
        rss.append(_rss_mb(worker.proc.pid))
    producer.close()

    ids = _ids(scores.records)
    assert set(ids) == {f"good-{run}-{i}" for i in range(n_good)}
    got = {dict(r.headers)[H_DLQ_ORIGIN].decode(): dict(r.headers)[H_DLQ_REASON].decode() for r in dlq.records}
    assert set(got) == set(origins), f"{len(set(origins) - set(got))} poison records not dead-lettered"
    wrong = {o: (origins[o].kind, reason) for o, reason in got.items() if reason not in origins[o].reasons}
    assert not wrong, wrong
    assert set(got.values()) <= set(DLQ_REASONS)
    assert len(dlq.records) == len(origins), "a poison record was dead-lettered twice"
    # A dead letter carries the original value, except a record too large to copy (it stays at dlq.origin).
    for r in dlq.records:
        h = dict(r.headers)
        p = origins[h[H_DLQ_ORIGIN].decode()]
        copied = (r.value or b"") == (p.value or b"")
        assert copied != (b"too large to copy" in h[H_DLQ_DETAIL]), (p.kind, h[H_DLQ_DETAIL])
        assert copied or len(p.value or b"") + sum(len(v) for _, v in p.headers) > MAX_FRAME_BYTES // 2
        assert not copied or p.kind != "oversized"
    assert worker.http_status("/healthz") == 200 and worker.proc.poll() is None
    # Memory: bounded, and the second half of the poison does not grow it much past the first.
    assert max(rss) < 3000, rss
    assert rss[2] - rss[1] < 150, rss
    assert worker.terminate() == 0
    _summary(capsys, "poison-frames", runs=1, sent=n_good + len(poison), poison=len(poison),
             kinds=len({p.kind for p in poison}), scored=len(ids), lost=n_good - len(ids),
             duplicated=sum(ids.values()) - len(ids), dead_lettered=len(dlq.records),
             reasons=",".join(f"{k}:{v}" for k, v in sorted(Counter(got.values()).items())),
             rss_mb="/".join(f"{m:.0f}" for m in rss))


# ---- 4. scoring slower than the poll interval ------------------------------------------------------------


def test_batches_slower_than_the_poll_interval_shrink_instead_of_storming(topics, start_worker, reader, capsys):
    n, batch, delay_ms, interval_ms = 32, 8, 500, 2000  # a full batch: 8 x 0.5 s = 4 s, twice the interval
    _, labels = _publish(topics, n, 61, "cam-s")
    scores = reader(topics.scores)
    t0 = time.monotonic()
    worker = start_worker(topics, INSPECTOR_BATCH__MAX_SIZE=str(batch), INSPECTOR_FAULTS__SCORE_DELAY_MS=str(delay_ms),
                          INSPECTOR_KAFKA__MAX_POLL_INTERVAL_MS=str(interval_ms),
                          INSPECTOR_KAFKA__SESSION_TIMEOUT_MS="6000")
    scores.until(lambda rs: len(_ids(rs)) >= n or worker.proc.poll() is not None, timeout_s=150)
    elapsed = time.monotonic() - t0
    assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()}"
    ids = _ids(scores.records)
    log = worker.log_path.read_text()
    evictions = log.count("offset commit refused")
    assignments = len(re.findall(r"assigned [1-9]", log))  # kafka-python may first join with no partitions
    sizes = [int(m) for m in re.findall(r"batch size lowered to (\d+)", log)]
    assert set(ids) == set(labels), f"lost {len(set(labels) - set(ids))} frames"
    duplicated = sum(ids.values()) - len(ids)
    # Each eviction re-scores at most one batch, and the batch halves each time: log2(8) + 1 evictions at most.
    assert 1 <= evictions <= 4 and assignments <= 1 + evictions, (evictions, assignments)
    assert duplicated <= evictions * batch, (duplicated, evictions)
    assert worker.terminate() == 0
    _summary(capsys, "slow-scoring", runs=1, sent=n, scored=len(ids), lost=len(set(labels) - set(ids)),
             duplicated=duplicated, dead_lettered=0, delay_per_frame_ms=delay_ms, max_poll_interval_ms=interval_ms,
             evictions=evictions, rebalances=assignments, batch_sizes="/".join(map(str, [batch, *sizes])),
             seconds=round(elapsed, 1))


# ---- 5. bad model files ------------------------------------------------------------------------------------


def _replace(path: Path, data: bytes) -> None:
    """Swap a file's content at once (write beside it, rename over it), as a deployment would."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _bad_models(good: Path, out: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its refusal must contain)."""
    raw = good.read_bytes()
    files: dict[str, tuple[Path, str]] = {}
    (out / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    files["truncated"] = (out / "truncated.safetensors", "truncated or not safetensors")
    flipped = bytearray(raw)
    flipped[-10] ^= 0xFF  # one bit pattern in the last tensor's data
    (out / "checksum.safetensors").write_bytes(bytes(flipped))
    files["wrong-checksum"] = (out / "checksum.safetensors", "checksum mismatch")
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)},
              str(out / "foreign.safetensors"))
    files["foreign"] = (out / "foreign.safetensors", "not an inspector model")
    # Our header (so the checksum is right) over another network's tensors.
    art = artifact_io.load(good)
    tensors = {"conv1.weight": torch.zeros(64, 3, 7, 7)}
    header = art.describe()
    save_file(tensors, str(out / "foreign-arch.safetensors"),
              metadata={"inspector": json.dumps({**header, "sha256": artifact_io._digest(tensors, header)})})
    files["foreign-arch"] = (out / "foreign-arch.safetensors", "do not match the described architecture")
    marker = out / "pickle-ran"

    class Payload:  # unpickling this would create `marker`
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (out / "pickle.safetensors").write_bytes(pickle.dumps(Payload()))
    files["pickle"] = (out / "pickle.safetensors", "not a readable model file")
    return files


def test_bad_model_files_are_refused_at_start_and_on_hot_reload(topics, start_worker, reader, tmp_path,
                                                                  default_model_path, capsys):
    bad = _bad_models(default_model_path, tmp_path)
    env = {**os.environ, **topics.env(), "INSPECTOR_MODEL__DEVICE": "cpu", "INSPECTOR_HTTP__PORT": "0"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "inspector", "serve", "--model", str(path)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (path, _) in bad.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        errors = [line for line in err.splitlines() if "error" in line]
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{err}"
        assert len(errors) == 1 and "Traceback" not in err, f"{name}:\n{err}"
        assert bad[name][1] in errors[0], f"{name}: {errors[0]}"
    assert not (tmp_path / "pickle-ran").exists(), "the pickle payload was unpickled"

    # Hot reload: a bad file is refused and the old model keeps serving; a good one takes over.
    live = tmp_path / "live" / "model.safetensors"
    live.parent.mkdir()
    live.write_bytes(default_model_path.read_bytes())
    old = artifact_io.load(live)
    new_version = "2" if old.model_version != "2" else "3"
    worker = start_worker(topics, INSPECTOR_MODEL__PATH=str(live), INSPECTOR_MODEL__RELOAD_POLL_S="1")
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-m"))
    scores, alerts = reader(topics.scores), reader(topics.alerts)
    frames = planned_stream(producer_settings(seed=71), n_frames=60, n_defects=9)
    rejected = 'inspector_model_reloads_total{result="rejected"}'
    accepted = 'inspector_model_reloads_total{result="ok"}'
    phases = []
    for phase, swap in enumerate([None, bad["truncated"][0], bad["wrong-checksum"][0], "good"]):
        if swap == "good":
            artifact_io.save(dataclasses.replace(old, model_version=new_version), live)
            _wait_for(lambda: _metric(worker, accepted) >= 1, 30, "the reload of the good model")
        elif swap is not None:
            before = _metric(worker, rejected)
            _replace(live, swap.read_bytes())
            _wait_for(lambda before=before: _metric(worker, rejected) > before, 30, "the refusal of a bad model")
        start = publisher.stats.sent
        publisher.publish(ListSource(frames[phase * 15:(phase + 1) * 15]), sequence_start=start)
        want = {f"cam-m-{publisher._run_id}-{i}" for i in range(start, start + 15)}
        scores.until(lambda rs, want=want: want <= set(_ids(rs)), timeout_s=60)
        versions = {s.model_version for s in _scores(scores.records) if s.frame_id in want}
        phases.append(versions)
        assert versions == {new_version if swap == "good" else old.model_version}, (phase, versions)
        assert worker.proc.poll() is None
    alerts.until(lambda _rs: False, timeout_s=2)
    for a in _scores_as_alerts(alerts.records):
        seq = int(a.frame_id.rsplit("-", 1)[1])
        assert a.model_version == (new_version if seq >= 45 else old.model_version), a
    assert _metric(worker, rejected) == 2 and _metric(worker, accepted) == 1
    assert f'inspector_model_info{{model_id="{old.model_id}",model_version="{new_version}"}} 1.0' in \
        worker.metrics_text()
    assert worker.terminate() == 0
    publisher.close()
    _summary(capsys, "bad-models", runs=len(bad) + 1, refused_at_start=len(bad), reloads_rejected=2,
             reloads_ok=1, sent=60, scored=len(_ids(scores.records)), lost=60 - len(_ids(scores.records)),
             duplicated=sum(_ids(scores.records).values()) - len(_ids(scores.records)), dead_lettered=0,
             versions="->".join("/".join(sorted(v)) for v in phases))


# ---- 6. SIGTERM under load ---------------------------------------------------------------------------------


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
        scores.until(lambda rs, k=k: len(_ids(rs)) >= (k + 1) * n // (stops + 2), timeout_s=120)
        t0 = time.monotonic()
        assert worker.terminate(timeout_s=60) == 0
        stop_s.append(time.monotonic() - t0)
        committed = sum(committed_offsets(topics.bootstrap, topics.group, topics.frames)[0].values())
        # Everything scored is committed and nothing more: the topic holds exactly one score per committed frame.
        scores.until(lambda rs, done=committed: len(rs) >= done, timeout_s=30)
        scores.until(lambda _rs: False, timeout_s=1)
        ids = _ids(scores.records)
        assert committed == len(scores.records) == len(ids) < n, (committed, len(scores.records))
        worker = start_worker(topics, **env)
    publishing.join(timeout=120)
    scores.until(lambda rs: len(_ids(rs)) >= n, timeout_s=180)
    ids = _ids(scores.records)
    assert set(ids) == {f"cam-t-{publisher._run_id}-{i}" for i in range(n)}
    assert len(scores.records) == n, f"{len(scores.records) - n} duplicates after graceful stops"
    assert worker.terminate() == 0
    publisher.close()
    _summary(capsys, "sigterm", runs=stops + 1, stops=stops, sent=n, scored=len(ids), lost=n - len(ids),
             duplicated=len(scores.records) - len(ids), dead_lettered=0,
             stop_seconds="/".join(f"{s:.1f}" for s in stop_s))


# ---- 6b. members joining and leaving mid-stream --------------------------------------------------------------


def _cameras_on_each_partition(partitions: int) -> list[str]:
    """One camera id per partition, as kafka-python's default partitioner places keyed records."""
    from kafka.partitioner.default import murmur2

    by_partition: dict[int, str] = {}
    for i in range(1000):
        cam = f"cam-j{i}"
        by_partition.setdefault((murmur2(cam.encode()) & 0x7FFFFFFF) % partitions, cam)
        if len(by_partition) == partitions:
            return [by_partition[p] for p in range(partitions)]
    raise AssertionError("no camera ids cover every partition")


@pytest.mark.parametrize(("transport", "exactly_once"), [("kafka-python", False), ("confluent", False),
                                                        ("kafka-python", True), ("confluent", True)])
def test_members_joining_and_leaving_mid_stream_lose_nothing(topics, start_worker, reader, capsys, transport,
                                                             exactly_once):
    """A rebalance drops the batch in hand. kafka-python keeps the position of a partition a member keeps
    across an eager rebalance, so the worker must rewind it, or the next commit skips the dropped frames."""
    if transport == "confluent":
        pytest.importorskip("confluent_kafka")
    labels: dict[str, str] = {}
    for i, camera in enumerate(_cameras_on_each_partition(2)):
        labels.update(_publish(topics, 150, 90 + i, camera)[1])
    n = len(labels)
    # Slow scoring (40 ms a frame) keeps a batch in hand whenever the group rebalances.
    env = {"INSPECTOR_BATCH__MAX_SIZE": "8", "INSPECTOR_FAULTS__SCORE_DELAY_MS": "40",
           "INSPECTOR_KAFKA__TRANSPORT": transport, "INSPECTOR_KAFKA__EXACTLY_ONCE": str(exactly_once).lower()}
    scores = reader(topics.scores)
    first = start_worker(topics, **env)
    scores.until(lambda rs: len(_ids(rs)) >= 40, timeout_s=120)
    second = start_worker(topics, **env)  # rebalance 1: the first keeps one partition
    scores.until(lambda rs: len(_ids(rs)) >= n // 2, timeout_s=120)
    assert len(_ids(scores.records)) < n, "the backlog drained before the second member left"
    assert second.terminate() == 0  # rebalance 2: the first keeps its partition and takes the other back
    scores.until(lambda rs: len(_ids(rs)) >= n, timeout_s=180)
    scores.until(lambda _rs: False, timeout_s=2)
    ids = _ids(scores.records)
    lost = set(labels) - set(ids)
    duplicated = sum(ids.values()) - len(ids)
    assert first.terminate() == 0
    assert not lost, f"lost {len(lost)} frames across 2 rebalances"
    assert duplicated <= (0 if exactly_once else 2 * 2 * 8), f"{duplicated} duplicates across 2 rebalances"
    _summary(capsys, f"rebalance-{transport}{'-eos' if exactly_once else ''}", rebalances=2, sent=n, scored=len(ids), lost=len(lost), duplicated=duplicated,
             dead_lettered=0)


# ---- 7. exactly-once ------------------------------------------------------------------------------------------


def _throughput(bootstrap: str, start_worker, frames: list, env: dict[str, str]) -> tuple[float, float]:
    """(frames per second through a backlog, from the score records' timestamps; ms per batch spent publishing
    and committing, from the worker's stage histogram)."""
    t = _new_topics(bootstrap, "tput")
    publisher = Publisher(t.kafka_settings(), producer_settings(camera_id="cam-x"))
    publisher.publish(ListSource(frames))
    publisher.close()
    reader = TopicReader(bootstrap, t.scores)
    try:
        worker = start_worker(t, **env)
        reader.until(lambda rs: len(rs) >= len(frames), timeout_s=180)
        stage = 'inspector_stage_duration_seconds_{}{{stage="{}"}}'
        spent = sum(_metric(worker, stage.format("sum", name)) for name in ("publish", "commit"))
        batches = _metric(worker, stage.format("count", "commit"))
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
    run = _kill_restart_run(topics, start_worker, reader, n=n, kills=kills, seed=91, camera="cam-e", env=env)
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
    _summary(capsys, f"exactly-once-{transport}", runs=kills + 1, kills=kills, sent=n, scored=len(ids),
             lost=len(set(labels) - set(ids)), duplicated=sum(ids.values()) - len(ids),
             alert_duplicates=sum(run["alert_ids"].values()) - len(run["alert_ids"]), dead_lettered=0,
             fps_at_least_once=round(fps["at-least-once"], 1), fps_exactly_once=round(fps["exactly-once"], 1),
             publish_commit_ms_per_batch=f'{ms["at-least-once"]:.1f}/{ms["exactly-once"]:.1f}')


# ---- security: SASL_PLAINTEXT + SCRAM-SHA-256 -------------------------------------------------------------


def test_sasl_scram_worker_scores_and_a_wrong_password_fails_in_one_line(own_broker, start_worker, capsys):
    topics = _new_topics(own_broker.bootstrap_servers, "sasl")
    sasl = {"INSPECTOR_KAFKA__BOOTSTRAP_SERVERS": own_broker.sasl_bootstrap_servers,
            "INSPECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "INSPECTOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256", "INSPECTOR_KAFKA__SASL_USERNAME": SCRAM_USER}
    over_sasl = KafkaSettings(**{
        **topics.kafka_settings().model_dump(), "bootstrap_servers": own_broker.sasl_bootstrap_servers,
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": SCRAM_USER,
        "sasl_password": SCRAM_PASSWORD})
    publisher = Publisher(over_sasl, producer_settings(camera_id="cam-a"))
    frames = planned_stream(producer_settings(seed=101), n_frames=30, n_defects=3)
    worker = start_worker(topics, **sasl, INSPECTOR_KAFKA__SASL_PASSWORD=SCRAM_PASSWORD)
    publisher.publish(ListSource(frames))
    publisher.close()
    scores = TopicReader(own_broker.bootstrap_servers, topics.scores)  # the test reads over PLAINTEXT
    try:
        scores.until(lambda rs: len(_ids(rs)) >= 30, timeout_s=90)
        ids = _ids(scores.records)
    finally:
        scores.close()
    assert set(ids) == {f"cam-a-{publisher._run_id}-{i}" for i in range(30)}
    metrics = worker.metrics_text()
    assert worker.terminate() == 0
    assert SCRAM_PASSWORD not in worker.log_path.read_text() and SCRAM_PASSWORD not in metrics

    wrong = "wrong-" + SCRAM_PASSWORD[::-1]
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "inspector", "serve"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **topics.env(), **sasl, "INSPECTOR_KAFKA__SASL_PASSWORD": wrong,
                               "INSPECTOR_KAFKA__REQUEST_TIMEOUT_MS": "5000", "INSPECTOR_HTTP__PORT": "0",
                               "INSPECTOR_MODEL__DEVICE": "cpu"})
    refused_s = time.monotonic() - t0
    ours = [line for line in done.stderr.splitlines() if line.startswith("inspector serve: error:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(ours) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "not the SCRAM-SHA-256 login of user" in ours[0] and SCRAM_USER in ours[0], ours
    assert wrong not in done.stdout + done.stderr and SCRAM_PASSWORD not in done.stdout + done.stderr
    _summary(capsys, "sasl-scram", runs=2, sent=30, scored=len(ids), lost=30 - len(ids),
             duplicated=sum(ids.values()) - len(ids), dead_lettered=0, wrong_password_exit=done.returncode,
             wrong_password_seconds=round(refused_s, 1))
