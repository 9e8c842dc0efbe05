"""A belt run, end to end: belt cameras (one `python -m producers belt` process per lane) -> Kafka -> a worker ->
the sorter -> a stand-in PLC that records every pulse; then each object's fate against the belt's ground truth
(belt_report.py). `make demo`, bench/belt.py and the integration test all run the line through this one path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from inspector.errors import TransportError
from inspector.http_endpoint import wait_until_ready
from inspector.kafka.kafka_python.clients import create_topics
from inspector.kafka.local_broker import free_port
from inspector.kafka.transport import assign_from_start, partition_reader
from inspector.settings import Settings, child_environment
from inspector.sorter.belt_report import BeltReport, score_ejections
from inspector.sorter.line_file import Line, parse_line
from inspector.sorter.standin_plc import StandinPlc
from inspector.synthetic.belt import BeltObject, camera_ready_file, read_truth

# The belt of the demo and the benchmark: 256-px frames, 1 mm a pixel, 0.256 m/s (a pixel every 3.9 ms), so that a
# banana fits the frame while it travels its share of the belt at 4 a second; the ejector 0.6 s downstream.
BELT_GEOMETRY = {"belt_speed_m_s": 0.256, "direction": "+x", "metres_per_pixel": 0.001, "frame_width_px": 256,
                 "frame_height_px": 256, "ejector_distance_m": 0.1536, "actuation_latency_ms": 15.0,
                 "pulse_ms": 60.0, "object_length_m": 0.04, "min_alerts": 1}


@dataclass(frozen=True)
class BeltPlan:
    """What to run: lanes of one camera each, its frame rate, the bananas' rate and defect share."""

    duration_s: float = 20.0
    lanes: int = 2
    fps: float = 15.0
    objects_per_second: float = 4.0
    defect_rate: float = 0.05
    seed: int = 7
    geometry: dict[str, object] = field(default_factory=dict)  # over BELT_GEOMETRY

    def line_file(self, plc_port: int) -> dict[str, object]:
        """Lane i: camera cam-i, coil i-1 of the one stand-in PLC."""
        return {"defaults": {**BELT_GEOMETRY, **self.geometry}, "lanes": [
            {"id": f"lane-{i}", "cameras": [{"id": f"cam-{i}"}],
             "actuator": {"protocol": "modbus", "host": "127.0.0.1", "port": plc_port, "coil": i - 1}}
            for i in range(1, self.lanes + 1)]}


@dataclass
class FrameTally:
    """What a subscriber to the line's topics saw, frame by frame (a re-scored frame counts once)."""

    scores: int = 0
    alerts: int = 0
    false_alerts: int = 0  # alerts on frames of good objects
    defect_frames: int = 0
    defect_frames_alerted: int = 0
    good_frames: int = 0
    dead_letters: int = 0
    latencies_s: list[float] = field(default_factory=list)  # capture -> score record received
    first_captured_ns: int | None = None  # the belt's first frame ...
    last_scored_ns: int | None = None  # ... and the last score received: the span the line ran
    late_object_ids: set[str] = field(default_factory=set)
    fired: list[tuple[str, int]] = field(default_factory=list)  # (lane, planned fire ns) of each pulse sent
    frame_ids: set[str] = field(default_factory=set)
    alert_ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, settings: Settings, topic: str, value: bytes, now_ns: int) -> None:
        k = settings.kafka
        if topic == k.dlq_topic:
            self.dead_letters += 1
            return
        message = json.loads(value)
        defective = message.get("label") not in (None, "good")
        if topic == k.scores_topic and message["frame_id"] not in self.frame_ids:
            self.frame_ids.add(message["frame_id"])
            self.scores += 1
            self.defect_frames += defective
            self.good_frames += not defective
            self.latencies_s.append((now_ns - message["captured_ns"]) / 1e9)
            first = self.first_captured_ns
            self.first_captured_ns = message["captured_ns"] if first is None else min(first, message["captured_ns"])
            self.last_scored_ns = now_ns
        elif topic == k.alerts_topic and message["frame_id"] not in self.alert_ids:
            self.alert_ids.add(message["frame_id"])
            self.alerts += 1
            self.defect_frames_alerted += defective
            self.false_alerts += not defective
        elif topic == settings.sorter.late_topic and message.get("object_id"):
            self.late_object_ids.add(message["object_id"])
        elif topic == k.ejections_topic and message.get("outcome") == "fired":
            self.fired.append((message["lane"], message["fire_ns"]))

    @property
    def seconds(self) -> float:
        """From the first frame's capture to the last score received (the frames rendered before are not in it)."""
        if self.first_captured_ns is None or self.last_scored_ns is None:
            return float("nan")
        return (self.last_scored_ns - self.first_captured_ns) / 1e9

    def latency_ms(self, quantile: float) -> float:
        return float(np.percentile(self.latencies_s, 100 * quantile) * 1000) if self.latencies_s else float("nan")


@dataclass
class BeltRun:
    report: BeltReport
    tally: FrameTally
    objects: list[BeltObject]
    line: Line
    sorter_log: Path
    worker_log: Path
    schedule_errors_ns: list[int]  # per pulse: when the PLC saw the coil go on minus the sorter's planned fire time
    sorter_metrics: str  # the sorter's /metrics at the end of the run

    def schedule_error_ms(self, quantile: float) -> float:
        errors = np.abs(self.schedule_errors_ns)
        return float(np.percentile(errors, 100 * quantile)) / 1e6 if len(errors) else float("nan")

    def summary_lines(self) -> list[str]:
        t = self.tally
        good_rate = t.false_alerts / t.good_frames if t.good_frames else float("nan")
        return [
            f"frames scored {t.scores} in {t.seconds:.1f} s ({t.scores / t.seconds:.1f} frames/s), "
            f"dead-lettered {t.dead_letters}; capture -> score p50 {t.latency_ms(0.5):.0f} ms, "
            f"p99 {t.latency_ms(0.99):.0f} ms",
            f"frames of defective bananas {t.defect_frames}, alerted {t.defect_frames_alerted}; false alarms "
            f"{t.false_alerts} in {t.good_frames} good frames ({good_rate:.1%})",
            *self.report.summary_lines(),
        ]

    def aim_report(self) -> BeltReport:
        """The run scored on the sorter's planned fire times instead of the PLC's coil-on times: where the pulses
        were aimed, without what the machine's scheduling added on the way to the coil."""
        planned: dict[str, list[int]] = {lane.lane_id: [] for lane in self.line.lanes}
        for lane, fire_ns in self.tally.fired:
            planned.setdefault(lane, []).append(fire_ns)
        return score_ejections(self.objects, planned, self.line, self.tally.late_object_ids)

    def aim_line(self) -> str:
        aim = self.aim_report()
        return (f"aim (planned fire time + actuation latency - arrival, defective ejected) p50 "
                f"{aim.fire_error_ms(0.5):.1f} ms, p99 {aim.fire_error_ms(0.99):.1f} ms; "
                f"{aim.spurious_pulses} planned pulses aimed at no object")

    def timing_line(self) -> str:
        """What the sorter and its ejector add: the PLC's coil-on time against the sorter's planned fire time."""
        return (f"sorter + PLC timing (coil on at the PLC - planned fire time) p50 {self.schedule_error_ms(0.5):.1f} ms, "
                f"p99 {self.schedule_error_ms(0.99):.1f} ms over {len(self.schedule_errors_ns)} pulses")


def _follow(settings: Settings, tally: FrameTally, stop: threading.Event) -> None:
    k = settings.kafka
    # What the line produced, as a read_committed sorter would see it.
    tail = partition_reader(k, client_id=f"{k.client_id}-tail", read_committed=True)
    try:
        assign_from_start(tail, [k.alerts_topic, k.scores_topic, k.dlq_topic, settings.sorter.late_topic,
                                 k.ejections_topic])
        while not stop.is_set():
            records = tail.poll(0.2)
            now = time.time_ns()
            with tally.lock:
                for record in records:
                    tally.take(settings, record.topic, record.value or b"", now)
    finally:
        tail.close()


def _kafka_environment(settings: Settings) -> dict[str, str]:
    """The topics and broker of `settings` for a child process (INSPECTOR_* variables)."""
    k, s = settings.kafka, settings.sorter
    return {
        "INSPECTOR_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers, "INSPECTOR_KAFKA__FRAMES_TOPIC": k.frames_topic,
        "INSPECTOR_KAFKA__ALERTS_TOPIC": k.alerts_topic, "INSPECTOR_KAFKA__SCORES_TOPIC": k.scores_topic,
        "INSPECTOR_KAFKA__DLQ_TOPIC": k.dlq_topic, "INSPECTOR_KAFKA__EVIDENCE_TOPIC": k.evidence_topic,
        "INSPECTOR_KAFKA__EJECTIONS_TOPIC": k.ejections_topic, "INSPECTOR_KAFKA__GROUP_ID": k.group_id,
        "INSPECTOR_KAFKA__TRANSPORT": k.transport, "INSPECTOR_SORTER__LATE_TOPIC": s.late_topic,
        "INSPECTOR_SORTER__DLQ_TOPIC": s.dlq_topic, "INSPECTOR_SORTER__GROUP_ID": s.group_id,
    }


class _Children:
    """The processes a run starts, stopped (SIGTERM, then SIGKILL) whatever happens."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log:
            process = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_belt(settings: Settings, plan: BeltPlan, work_dir: Path,
             progress: Callable[[str], None] | None = None) -> BeltRun:
    """Run the line on the broker of `settings` for `plan.duration_s` and score what the stand-in PLC received."""
    say = progress or (lambda _text: None)
    k, s = settings.kafka, settings.sorter
    create_topics(k, {k.frames_topic: 2, k.alerts_topic: 1, k.scores_topic: 1, k.dlq_topic: 1, k.evidence_topic: 1,
                      k.ejections_topic: 1, s.late_topic: 1, s.dlq_topic: 1})
    children, tally, stop = _Children(), FrameTally(), threading.Event()
    with StandinPlc() as plc:
        line_path = work_dir / "line.yaml"
        line_path.write_text(yaml.safe_dump(plan.line_file(plc.port), sort_keys=False))
        line = parse_line(plan.line_file(plc.port), str(line_path))
        env = child_environment(**_kafka_environment(settings), INSPECTOR_MODEL__PATH=str(settings.model.path))
        worker_port, sorter_port = free_port(), free_port()
        follower = threading.Thread(target=_follow, args=(settings, tally, stop), daemon=True)
        try:
            worker = children.start(["-m", "inspector", "serve"], {**env, "INSPECTOR_HTTP__PORT": str(worker_port)},
                                    work_dir / "worker.log")
            sorter = children.start(["-m", "inspector", "sort", "--line", str(line_path)],
                                    {**env, "INSPECTOR_SORTER__PORT": str(sorter_port)}, work_dir / "sorter.log")
            for name, process, port in (("worker", worker, worker_port), ("sorter", sorter, sorter_port)):
                try:
                    wait_until_ready(process, port)
                except TransportError as exc:
                    raise TransportError(f"the {name}: {exc}; see {work_dir / (name + '.log')}") from None
            say(f"worker and sorter ready; rendering {plan.duration_s:g} s of belt for {plan.lanes} lane(s) ...")
            follower.start()
            cameras, start_file = [], work_dir / "start"
            for lane in line.lanes:
                camera = lane.cameras[0].camera_id
                cameras.append(children.start(
                    ["-m", "producers", "belt", "--line", str(line_path), "--camera-id", camera, "--prerender",
                     "--duration-s", f"{plan.duration_s:g}", "--fps", f"{plan.fps:g}", "--objects-per-second",
                     f"{plan.objects_per_second:g}", "--defect-rate", f"{plan.defect_rate:g}", "--seed",
                     str(plan.seed + int(camera.rsplit("-", 1)[1])), "--truth-out", str(work_dir / f"{camera}.jsonl"),
                     "--start-file", str(start_file)],
                    env, work_dir / f"{camera}.log"))
            # The cameras start together once all have rendered: one still rendering would take the worker's cores.
            while not all(camera_ready_file(start_file, lane.cameras[0].camera_id).exists() for lane in line.lanes):
                if any(c.poll() is not None for c in cameras):
                    break  # a camera failed: reported below
                time.sleep(0.05)
            start_file.touch()
            while any(c.poll() is None for c in cameras):
                time.sleep(1.0)
                for process, name in ((worker, "worker"), (sorter, "sorter")):
                    if process.poll() is not None:
                        raise TransportError(f"the {name} exited with code {process.returncode}; see "
                                             f"{work_dir / (name + '.log')}")
                with tally.lock:
                    say(f"  scored {tally.scores:5d}  alerts {tally.alerts:4d}  pulses {len(plc.pulses()):4d}")
            failed = [c.args for c in cameras if c.returncode != 0]
            if failed:
                raise TransportError(f"a belt camera failed: {failed}; see its log in {work_dir}")
            objects = [o for lane in line.lanes for o in read_truth(work_dir / f"{lane.cameras[0].camera_id}.jsonl")]
            # Every fruit reaches its ejector, and its last outcomes are published, before the run is scored.
            last_arrival = max((o.arrival_ns for o in objects), default=time.time_ns())
            time.sleep(max(0.0, (last_arrival - time.time_ns()) / 1e9) + 1.5)
            sorter_metrics = _metrics_text(sorter_port)
        finally:
            stop.set()
            children.stop_all()
            if follower.is_alive():
                follower.join(timeout=5)
        pulses = {lane.lane_id: [p.on_ns for p in plc.pulses(coil=i)] for i, lane in enumerate(line.lanes)}
    report = score_ejections(objects, pulses, line, tally.late_object_ids)
    return BeltRun(report, tally, objects, line, work_dir / "sorter.log", work_dir / "worker.log",
                   _schedule_errors(pulses, tally.fired), sorter_metrics)


def _schedule_errors(pulses: dict[str, list[int]], fired: list[tuple[str, int]]) -> list[int]:
    """Each planned fire time matched to the PLC's nearest coil-on of its lane (within 100 ms)."""
    errors = []
    for lane, fire_ns in fired:
        nearest = min(pulses.get(lane, []), key=lambda on: abs(on - fire_ns), default=None)
        if nearest is not None and abs(nearest - fire_ns) < 100_000_000:
            errors.append(nearest - fire_ns)
    return errors


def _metrics_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""
