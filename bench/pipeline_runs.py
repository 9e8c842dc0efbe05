"""The measurements of the pipeline benchmark (`bench/pipeline.py` runs them in order, `bench/ab.py` reuses
them): a camera process, worker processes draining a backlog through the local broker, the
bare model, the naive worker, and the latency run at a fixed rate.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from latency_figures import histogram_quantiles, histogram_sum, quantiles
from process_cpu import CpuShares, cpu_seconds, descendants
from synthetic_frames import LIMITS

from inspector.contracts import Alert, FrameMeta, FrameScore
from inspector.decode.jpeg import decode_jpeg
from inspector.http_endpoint import wait_until_ready
from inspector.kafka.kafka_python.clients import create_topics
from inspector.kafka.local_broker import LocalKafka, free_port
from inspector.model import artifact as artifact_io
from inspector.model.runtime import ModelRunner, pick_device
from inspector.paths import DEFAULT_MODEL
from inspector.process import freeze_long_lived_objects
from inspector.settings import KafkaSettings

MessageT = TypeVar("MessageT", Alert, FrameScore)


def produce(bootstrap: str, topic: str, jpegs: list[bytes], n: int, rate: float = 0.0, run: str = "b") -> float:
    """Send n frames (cycling the pool) flat out or at `rate` frames/s; returns frames/s achieved. At a rate it is
    a camera and lingers as the project's producers do (kafka.linger_ms); flat out it fills a backlog."""
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=KafkaSettings().linger_ms if rate else 5,
                      max_request_size=16 << 20, batch_size=1 << 20)
    p.partitions_for(topic)  # connected, with metadata, before the first capture stamp: a camera runs for hours
    t0 = time.monotonic()
    for i in range(n):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        meta = FrameMeta(frame_id=f"{run}-{i}", camera_id=f"cam-{i % 4}", sequence=i, captured_ns=time.time_ns())
        p.send(topic, key=meta.camera_id.encode(), value=jpegs[i % len(jpegs)], headers=meta.to_headers())
    p.flush()
    dt = time.monotonic() - t0
    p.close()
    return n / dt


def _produce_child(bootstrap: str, topic: str, jpegs: list[bytes], n: int, rate: float, run: str, conn) -> None:
    freeze_long_lived_objects()  # a collection pause here would read as worker latency
    conn.send(produce(bootstrap, topic, jpegs, n, rate, run))


def produce_in_child(bootstrap: str, topic: str, jpegs: list[bytes], n: int, rate: float = 0.0,
                     run: str = "b", producers: int = 1) -> float:
    """`produce` in a process of its own: in this one it would share the GIL with the score reader, and a
    starved producer holds frames back after stamping their capture time, which reads as worker latency.
    `producers` processes share the n frames and the rate, for rates one Python producer cannot reach;
    returns the frames/s of all of them together."""
    ctx = multiprocessing.get_context("spawn")
    shares = [n // producers + (i < n % producers) for i in range(producers)]
    pipes, children = [], []
    for i, share in enumerate(shares):
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_produce_child, daemon=True, args=(
            bootstrap, topic, jpegs, share, rate / producers, run if producers == 1 else f"{run}p{i}", send))
        child.start()
        pipes.append(receive)
        children.append(child)
    seconds = max(share / receive.recv() for share, receive in zip(shares, pipes, strict=True) if share)
    for child in children:
        child.join(timeout=60)
    return n / seconds


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(topic) or set()
        return sum(c.committed(TopicPartition(topic, p)) or 0 for p in parts)
    finally:
        c.close()


def read_scores(bootstrap: str, topic: str, n: int, timeout_s: float = 120) -> list[tuple[FrameScore, int]]:
    """(score, receive time ns) for the first n distinct frames of a scores topic."""
    return _read_first(bootstrap, topic, n, FrameScore, timeout_s)


def read_alerts(bootstrap: str, topic: str, n: int, timeout_s: float = 120) -> list[tuple[Alert, int]]:
    """(alert, receive time ns) for the first n distinct frames of an alerts topic."""
    return _read_first(bootstrap, topic, n, Alert, timeout_s)


def _read_first(bootstrap: str, topic: str, n: int, message: type[MessageT], timeout_s: float
                ) -> list[tuple[MessageT, int]]:
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                      enable_auto_commit=False)
    seen: dict[str, tuple[MessageT, int]] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < n and time.monotonic() < deadline:
        for records in c.poll(timeout_ms=200).values():
            now = time.time_ns()
            for r in records:
                m = message.model_validate_json(r.value)
                seen.setdefault(m.frame_id, (m, now))
    c.close()
    return list(seen.values())


class WorkerProc:
    def __init__(self, bootstrap: str, topics: dict[str, str], group: str, *, null: bool = False,
                 batch: int = 32, transport: str = "kafka-python", log: Path, env: dict[str, str] | None = None,
                 processes: int = 1) -> None:
        self.port = free_port()
        env = {**os.environ, "INSPECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "INSPECTOR_KAFKA__GROUP_ID": group,
               "INSPECTOR_KAFKA__FRAMES_TOPIC": topics["frames"], "INSPECTOR_KAFKA__SCORES_TOPIC": topics["scores"],
               "INSPECTOR_KAFKA__ALERTS_TOPIC": topics["alerts"], "INSPECTOR_KAFKA__DLQ_TOPIC": topics["dlq"],
               "INSPECTOR_HTTP__PORT": str(self.port), "INSPECTOR_MODEL__NULL": "true" if null else "false",
               "INSPECTOR_BATCH__MAX_SIZE": str(batch), "INSPECTOR_MODEL__RELOAD_POLL_S": "0",
               "INSPECTOR_KAFKA__TRANSPORT": transport, "INSPECTOR_WORKERS__PROCESSES": str(processes),
               "INSPECTOR_KAFKA__EVIDENCE_TOPIC": topics.get("evidence", "defect-evidence"), **(env or {})}
        with log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "inspector", "serve"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        wait_until_ready(self.proc, self.port)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped in 60 s (a crashed run must not leave workers behind)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def topic_set(tag: str) -> dict[str, str]:
    return {k: f"{k}-{tag}" for k in ("frames", "scores", "alerts", "dlq", "evidence")}


def drain(broker: LocalKafka, jpegs: list[bytes], n: int, tag: str, *, null: bool, workers: int = 1,
          partitions: int = 2, batch: int = 32, transport: str = "kafka-python", logdir: Path, processes: int = 1,
          producers: int = 1) -> dict:
    """One worker: preload n frames, start it, and time the drain by the scored_ns of the score records.

    Several workers (`workers` commands, or one `inspector serve --processes` of several): start them on the
    empty topic and wait until the group has settled with every member, then send the n frames flat out from
    `producers` camera processes. (A member that joins while another drains stalls the group for a rebalance,
    longer than a fast drain lasts.) The cameras' own rate is recorded beside: the drain cannot beat it."""
    bs = broker.bootstrap_servers
    t = topic_set(tag)
    create_topics(KafkaSettings(bootstrap_servers=bs),
                  {t["frames"]: partitions, t["scores"]: 1, t["alerts"]: 1, t["dlq"]: 1})
    one_member = workers == 1 and processes == 1
    if one_member:
        produce(bs, t["frames"], jpegs, n, run=tag)
    procs = [WorkerProc(bs, t, f"g-{tag}", null=null, batch=batch, transport=transport, log=logdir / f"{tag}-{i}.log",
                        processes=processes) for i in range(workers)]
    try:
        if one_member:
            return _timed_drain(bs, t, procs, n, tag, null=null, transport=transport, broker_pid=broker.pid)
        for w in procs:
            w.wait_ready()
        settle_until = time.monotonic() + 60
        while not all(w.ready() for w in procs) and time.monotonic() < settle_until:
            time.sleep(0.1)
        time.sleep(2.0)  # a member that reports ready may still see the group's last rebalance
        camera: list[float] = []
        sender = threading.Thread(target=lambda: camera.append(
            produce_in_child(bs, t["frames"], jpegs, n, run=tag, producers=producers)))
        sender.start()
        result = _timed_drain(bs, t, procs, n, tag, null=null, transport=transport, broker_pid=broker.pid,
                              settle=True)
        sender.join()
        return {**result, "camera_frames_per_s": round(camera[0], 1) if camera else None}
    finally:
        for w in procs:
            w.stop()


def _timed_drain(bs: str, t: dict[str, str], procs: list[WorkerProc], n: int, tag: str, *,
                 null: bool, transport: str, broker_pid: int | None, settle: bool = False) -> dict:
    workers = len(procs)
    for w in procs:
        w.wait_ready()
    settled_ns = 0
    if settle:
        # A member that joins while another drains stalls the group for a rebalance (seconds on a fast
        # machine). Count only what is scored once every member is ready at the same time.
        deadline = time.monotonic() + 60
        while not all(w.ready() for w in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        settled_ns = time.time_ns()
    pids = [pid for w in procs for pid in (w.proc.pid, *descendants(w.proc.pid))]  # a supervisor's workers too
    cpu0 = sum(cpu_seconds(pid) for pid in pids)
    wall0 = time.monotonic()
    with CpuShares(pids, broker_pid) as machine:
        while committed_total(bs, f"g-{tag}", t["frames"]) < n and time.monotonic() - wall0 < 600:
            time.sleep(0.5)
    cpu1 = sum(cpu_seconds(pid) for pid in pids)
    wall = time.monotonic() - wall0
    metrics = procs[0].metrics()
    scores = read_scores(bs, t["scores"], n)
    scored = sorted(s.scored_ns for s, _ in scores if s.scored_ns >= settled_ns)
    # The drain rate between the first and the last score: excludes start-up, includes everything else.
    span = (scored[-1] - scored[0]) / 1e9 if len(scored) > 1 else float("nan")
    return {"frames": n, "scored": len(scores), "workers": workers, "null_model": null, "transport": transport,
            # None when one member drained the backlog before the other was ready (nothing left to share).
            "frames_per_s": round((len(scored) - 1) / span, 1) if len(scored) > 1 else None, "cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
            **({"scored_after_group_settled": len(scored)} if settled_ns else {}),
            # the whole machine's CPU between the first and the last score, in % of one core, split by who used it
            "machine_cpu": machine.shares(scored[0], scored[-1]) if scored else {},
            # Seconds per stage over the drain's wall time: poll, publish and commit are the main thread's,
            # decode (waiting for it) and score the scoring thread's, which a saturated worker keeps near 1.
            "stage_share": {stage: round(histogram_sum(metrics, "inspector_stage_duration_seconds",
                                                       f'stage="{stage}"') / wall, 3)
                            for stage in ("poll", "decode", "score", "publish", "commit")}}


def naive_worker(broker: LocalKafka, jpegs: list[bytes], n: int, tag: str) -> dict:
    """Per message: poll one -> decode -> score -> produce -> flush -> commit (in this process)."""
    bs = broker.bootstrap_servers
    t = topic_set(tag)
    create_topics(KafkaSettings(bootstrap_servers=bs), {t["frames"]: 2, t["scores"]: 1})
    produce(bs, t["frames"], jpegs, n, run=tag)
    device = pick_device("auto")
    runner = ModelRunner(artifact_io.load(DEFAULT_MODEL, device), device)
    runner.warm_up((1,))
    c = KafkaConsumer(t["frames"], bootstrap_servers=bs, group_id=f"g-{tag}", enable_auto_commit=False,
                      auto_offset_reset="earliest", max_poll_records=1)
    p = KafkaProducer(bootstrap_servers=bs, acks="all")
    done, t0 = 0, None
    while done < n:
        for tp, records in c.poll(timeout_ms=500, max_records=1).items():
            for r in records:
                t0 = t0 or time.monotonic()
                img, _ = decode_jpeg(r.value, size=runner.size, **LIMITS)
                score = float(runner.score(img[None])[0][0])
                p.send(t["scores"], value=json.dumps({"frame": r.offset, "score": score}).encode())
                p.flush()
                c.commit({tp: OffsetAndMetadata(r.offset + 1, "", -1)})
                done += 1
    dt = time.monotonic() - (t0 or time.monotonic())
    c.close()
    p.close()
    return {"frames": n, "frames_per_s": round(n / dt, 1)}


def bare_model(jpegs: list[bytes], batch: int, seconds: float = 5.0, streams: int = 1) -> dict:
    """The model alone on pre-decoded batches: one batch at a time (streams=1, torch's threads on it), or as the
    CPU worker runs it, `streams` batches at once from threads of their own, each on its share of the threads."""
    device = pick_device("auto")
    threads = torch.get_num_threads()
    runner = ModelRunner(artifact_io.load(DEFAULT_MODEL, device), device, cpu_streams=streams)
    images = np.stack([decode_jpeg(jpegs[i % len(jpegs)], size=runner.size, **LIMITS)[0] for i in range(batch)])

    def loop(t0: float) -> int:
        calls = 0
        while time.perf_counter() - t0 < seconds:
            runner.score(images)
            calls += 1
        return calls

    try:
        with ThreadPoolExecutor(runner.streams) as pool:
            for f in [pool.submit(runner.warm_up, (batch,)) for _ in range(runner.streams)]:
                f.result()
            t0 = time.perf_counter()
            calls = sum(f.result() for f in [pool.submit(loop, t0) for _ in range(runner.streams)])
        return {"batch": batch, "streams": runner.streams,
                "frames_per_s": round(calls * batch / (time.perf_counter() - t0), 1)}
    finally:
        torch.set_num_threads(threads)  # the runner divided them among its streams (a process-wide setting)


def latency_run(broker: LocalKafka, jpegs: list[bytes], rate: float, seconds: float, tag: str, logdir: Path,
                batch: int = 32, transport: str = "kafka-python", null: bool = False, processes: int = 1,
                partitions: int = 2, producers: int = 1) -> dict:
    bs = broker.bootstrap_servers
    t = topic_set(tag)
    create_topics(KafkaSettings(bootstrap_servers=bs),
                  {t["frames"]: partitions, t["scores"]: 1, t["alerts"]: 1, t["dlq"]: 1})
    w = WorkerProc(bs, t, f"g-{tag}", null=null, batch=batch, transport=transport, log=logdir / f"{tag}.log",
                   processes=processes)
    n = int(rate * seconds)
    received, achieved, metrics = _feed_at_rate(w, bs, t["frames"], jpegs, n, rate, tag,
                                                lambda: read_scores(bs, t["scores"], n, seconds + 60), producers)
    received.sort(key=lambda sr: sr[0].captured_ns)
    lat = np.array([(recv - s.captured_ns) / 1e6 for s, recv in received])  # (n,) ms, in capture order
    captured_s = np.array([(s.captured_ns - received[0][0].captured_ns) / 1e9 for s, _ in received])

    # Where the tail sits in time: the first second (clients connecting, first fetches) apart from the rest.
    per_second = [{"second": sec, "frames": int(m.sum()), "p99_ms": round(float(np.percentile(lat[m], 99)), 1),
                   "max_ms": round(float(lat[m].max()), 1)}
                  for sec in range(int(captured_s.max()) + 1 if len(lat) else 0)
                  if (m := (captured_s >= sec) & (captured_s < sec + 1)).any()]
    stages = {stage: histogram_quantiles(metrics, "inspector_stage_duration_seconds", f'stage="{stage}"')
              for stage in ("poll", "decode", "score", "publish", "commit")}
    return {"transport": transport, "rate_target": rate, "rate_achieved": round(achieved, 1), "frames": n, "received": len(received),
            "e2e_ms": quantiles(lat), "e2e_ms_after_first_second": quantiles(lat[captured_s >= 1.0]),
            "per_second": per_second,
            "worker_e2e_ms": histogram_quantiles(metrics, "inspector_end_to_end_latency_seconds"),
            "stage_ms": stages,
            "batch_size": histogram_quantiles(metrics, "inspector_batch_size_frames", scale=1.0)}


def alert_latency_run(broker: LocalKafka, jpegs: list[bytes], rate: float, seconds: float, tag: str, logdir: Path,
                      *, evidence: bool, batch: int = 32) -> dict:
    """The default worker at `rate` with threshold 0, so that every frame alerts (the worst case for evidence):
    capture -> alert received, with the evidence of every alert drawn and published, or with evidence off."""
    bs = broker.bootstrap_servers
    t = topic_set(tag)
    create_topics(KafkaSettings(bootstrap_servers=bs), {t["frames"]: 2, t["scores"]: 1, t["alerts"]: 1, t["dlq"]: 1,
                                                        t["evidence"]: 1})
    env = {"INSPECTOR_MODEL__THRESHOLD": "0", "INSPECTOR_KAFKA__EVIDENCE_TOPIC": t["evidence"] if evidence else ""}
    w = WorkerProc(bs, t, f"g-{tag}", batch=batch, log=logdir / f"{tag}.log", env=env)
    n = int(rate * seconds)
    received, achieved, metrics = _feed_at_rate(w, bs, t["frames"], jpegs, n, rate, tag,
                                                lambda: read_alerts(bs, t["alerts"], n, seconds + 60))
    lat = np.array([(recv - a.captured_ns) / 1e6 for a, recv in received])  # (n,) ms
    stages = {stage: histogram_quantiles(metrics, "inspector_stage_duration_seconds", f'stage="{stage}"')
              for stage in ("score", "publish", "commit", "evidence")}
    return {"evidence": evidence, "rate_target": rate, "rate_achieved": round(achieved, 1), "frames": n,
            "alerts_received": len(received),
            "alert_e2e_ms": quantiles(lat),
            "worker_e2e_ms": histogram_quantiles(metrics, "inspector_end_to_end_latency_seconds"), "stage_ms": stages}


def _feed_at_rate(worker: WorkerProc, bs: str, frames_topic: str, jpegs: list[bytes], n: int, rate: float,
                  tag: str, read: Callable[[], list], producers: int = 1) -> tuple[list, float, str]:
    """Once the worker is ready, publish n frames at `rate` from a child process while `read()` collects what
    the worker produced in a thread -> (what was read, the rate achieved, the worker's metrics text)."""
    received: list = []
    try:
        worker.wait_ready()
        freeze_long_lived_objects()  # this process reads the results: a pause here reads as latency
        reader = threading.Thread(target=lambda: received.extend(read()))
        reader.start()
        achieved = produce_in_child(bs, frames_topic, jpegs, n, rate=rate, run=tag, producers=producers)
        reader.join()
        return received, achieved, worker.metrics()
    finally:
        gc.unfreeze()
        worker.stop()
