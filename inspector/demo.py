"""`make demo`: a real local Kafka broker, a belt of bananas (~5 % defective) passing two cameras, one worker, the
sorter ejecting through a stand-in PLC (a real Modbus TCP server), live progress, and a summary that ends with what
left the belt: ejection recall, false ejections and the fire-time error. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from inspector.errors import TransportError
from inspector.kafka.local_broker import LocalKafka, LocalKafkaCluster
from inspector.settings import Settings
from inspector.sorter.belt_run import BeltPlan, run_belt


def _ensure_model(settings: Settings) -> None:
    path = Path(settings.model.path)
    if path.is_file():
        return
    print(f"no model at {path}: training a small one on synthetic good bananas (a few minutes on 2 cores)")
    from inspector.decode.preprocess import list_images, load_images
    from inspector.model.feature_reconstructor import FeatureReconstructorConfig
    from inspector.model.runtime import pick_device
    from inspector.synthetic.bananas import write_dataset
    from inspector.training.config import TrainConfig
    from inspector.training.pipeline import train_and_calibrate

    with tempfile.TemporaryDirectory(prefix="bananas-") as tmp:
        write_dataset(Path(tmp), n_train=400, n_test_good=0, n_test_per_defect=0, size=256, seed=1)
        paths = list_images(Path(tmp) / "train" / "good")
        cfg = FeatureReconstructorConfig()
        # Lite0 alone: the belt needs the faster backbone more than the last point of AUROC.
        train_and_calibrate(load_images(paths, cfg.image_size), paths, path, cfg, TrainConfig(backbones=(cfg.backbone,)),
                            pick_device(settings.model.device), model_version="demo")


def pace_hint(frames_per_second: float, late: int, lanes: int, fps: float) -> str | None:
    """A summary line when the worker scored fewer frames a second than the cameras sent and ejections came late: on
    a slower machine than the default rate assumes, the fruit passes before its alert arrives, whatever the model."""
    offered = lanes * fps
    if not late or not frames_per_second < 0.95 * offered:
        return None
    holds = max(1, int(0.8 * frames_per_second / lanes))
    return (f"this machine's worker scored {frames_per_second:.1f} of the {offered:g} frames/s the cameras sent, so "
            f"alerts reached the sorter after their fruit had passed: `inspector demo --fps {holds}` runs a belt it holds")


def run_demo(settings: Settings, *, seconds: float, fps: float, defect_rate: float, kafka_nodes: int = 1) -> int:
    _ensure_model(settings)
    broker: LocalKafka | LocalKafkaCluster
    if kafka_nodes > 1:
        print(f"starting a local Kafka cluster (Apache Kafka, KRaft, {kafka_nodes} nodes) ...", flush=True)
        broker = LocalKafkaCluster(kafka_nodes)
        replication = {"replication_factor": broker.replication_factor,
                       "min_insync_replicas": broker.min_insync_replicas}
    else:
        print("starting a local Kafka broker (Apache Kafka, KRaft, single node) ...", flush=True)
        broker, replication = LocalKafka(), {}
    with broker:
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"bootstrap_servers": broker.bootstrap_servers, **replication})})
        plan = BeltPlan(duration_s=seconds, fps=fps, defect_rate=defect_rate)
        print(f"belt: {plan.lanes} lanes, a camera each at {fps:g} fps, {plan.objects_per_second:g} bananas a second "
              f"per lane; the ejector {0.6:g} s downstream of the camera (logs in {broker.work_dir})", flush=True)
        try:
            run = run_belt(settings, plan, broker.work_dir, progress=lambda text: print(text, flush=True))
        except TransportError as exc:
            raise TransportError(f"{exc} (logs in {broker.work_dir})") from None
        print("\n=== demo summary ===")
        report, tally = run.report, run.tally
        late = report.count("late", defective=True) + report.count("late", defective=False)
        hint = pace_hint(tally.scores / tally.seconds, late, plan.lanes, fps) if tally.scores else None
        lines = run.summary_lines()
        for line in [lines[0], *([hint] if hint else []), *lines[1:-1], run.timing_line(), lines[-1]]:
            print(line)
        if run.tally.scores == 0:
            raise TransportError(f"no frame was scored; see {run.worker_log}")
    print("stopped the producers, the worker, the sorter, the stand-in PLC and the broker.")
    return 0
