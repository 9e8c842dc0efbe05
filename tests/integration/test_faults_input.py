"""Bad input and slow scoring on a real broker: poison frames dead-lettered, batches slower than the poll
interval, and bad model files refused at start and on hot reload."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
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
    FrameMeta,
)
from inspector.model import artifact as artifact_io
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from ..poison import MAX_FRAME_BYTES, Poison, draw_poison
from .conftest import producer_settings
from .fault_scenarios import (
    metric,
    parse_alerts,
    parse_scores,
    publish_planned,
    rss_mb,
    score_ids,
    summary,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


# ---- poison frames (tests/poison.py) --------------------------------------------------------


def test_poison_frames_are_dead_lettered_and_the_worker_stays_up(topics, start_worker, reader, capsys):
    poison = draw_poison(per_kind=5)
    np.random.default_rng(4).shuffle(poison)  # type: ignore[arg-type] - kinds mixed across both halves
    n_good = 120
    good = planned_stream(producer_settings(seed=51), n_frames=n_good, n_defects=0)
    worker = start_worker(topics, INSPECTOR_BATCH__MAX_SIZE="8",
                          INSPECTOR_LIMITS__MAX_FRAME_BYTES=str(MAX_FRAME_BYTES))
    rss = [rss_mb(worker.proc.pid)]
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
        scores.until(lambda rs, want=n_scored: len(score_ids(rs)) >= want or worker.proc.poll() is not None,
                     timeout_s=120)
        dlq.until(lambda rs: len(rs) >= len(origins) or worker.proc.poll() is not None, timeout_s=60)
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()}"
        rss.append(rss_mb(worker.proc.pid))
    producer.close()

    ids = score_ids(scores.records)
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
    summary(capsys, "poison-frames", runs=1, sent=n_good + len(poison), poison=len(poison),
             kinds=len({p.kind for p in poison}), scored=len(ids), lost=n_good - len(ids),
             duplicated=sum(ids.values()) - len(ids), dead_lettered=len(dlq.records),
             reasons=",".join(f"{k}:{v}" for k, v in sorted(Counter(got.values()).items())),
             rss_mb="/".join(f"{m:.0f}" for m in rss))


# ---- scoring slower than the poll interval ------------------------------------------------------------


def test_batches_slower_than_the_poll_interval_shrink_instead_of_storming(topics, start_worker, reader, capsys):
    n, batch, delay_ms, interval_ms = 32, 8, 500, 2000  # a full batch: 8 x 0.5 s = 4 s, twice the interval
    _, labels = publish_planned(topics, n, 61, "cam-s")
    scores = reader(topics.scores)
    t0 = time.monotonic()
    worker = start_worker(topics, INSPECTOR_BATCH__MAX_SIZE=str(batch), INSPECTOR_FAULTS__SCORE_DELAY_MS=str(delay_ms),
                          INSPECTOR_KAFKA__MAX_POLL_INTERVAL_MS=str(interval_ms),
                          INSPECTOR_KAFKA__SESSION_TIMEOUT_MS="6000")
    scores.until(lambda rs: len(score_ids(rs)) >= n or worker.proc.poll() is not None, timeout_s=150)
    elapsed = time.monotonic() - t0
    assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()}"
    ids = score_ids(scores.records)
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
    summary(capsys, "slow-scoring", runs=1, sent=n, scored=len(ids), lost=len(set(labels) - set(ids)),
             duplicated=duplicated, dead_lettered=0, delay_per_frame_ms=delay_ms, max_poll_interval_ms=interval_ms,
             evictions=evictions, rebalances=assignments, batch_sizes="/".join(map(str, [batch, *sizes])),
             seconds=round(elapsed, 1))


# ---- bad model files ------------------------------------------------------------------------------------


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
            wait_for(lambda: metric(worker, accepted) >= 1, 30, "the reload of the good model")
        elif swap is not None:
            before = metric(worker, rejected)
            _replace(live, swap.read_bytes())
            wait_for(lambda before=before: metric(worker, rejected) > before, 30, "the refusal of a bad model")
        start = publisher.stats.sent
        publisher.publish(ListSource(frames[phase * 15:(phase + 1) * 15]), sequence_start=start)
        want = {f"cam-m-{publisher._run_id}-{i}" for i in range(start, start + 15)}
        scores.until(lambda rs, want=want: want <= set(score_ids(rs)), timeout_s=60)
        versions = {s.model_version for s in parse_scores(scores.records) if s.frame_id in want}
        phases.append(versions)
        assert versions == {new_version if swap == "good" else old.model_version}, (phase, versions)
        assert worker.proc.poll() is None
    alerts.until(lambda _rs: False, timeout_s=2)
    for a in parse_alerts(alerts.records):
        seq = int(a.frame_id.rsplit("-", 1)[1])
        assert a.model_version == (new_version if seq >= 45 else old.model_version), a
    assert metric(worker, rejected) == 2 and metric(worker, accepted) == 1
    assert f'inspector_model_info{{model_id="{old.model_id}",model_version="{new_version}"}} 1.0' in \
        worker.metrics_text()
    assert worker.terminate() == 0
    publisher.close()
    summary(capsys, "bad-models", runs=len(bad) + 1, refused_at_start=len(bad), reloads_rejected=2,
             reloads_ok=1, sent=60, scored=len(score_ids(scores.records)), lost=60 - len(score_ids(scores.records)),
             duplicated=sum(score_ids(scores.records).values()) - len(score_ids(scores.records)), dead_lettered=0,
             versions="->".join("/".join(sorted(v)) for v in phases))
