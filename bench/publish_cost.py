"""Where a worker's per-frame CPU goes besides the model: each piece of the hot loop's per-frame work timed alone,
in this process, on the same ~19 KB 256x256 JPEGs as bench/pipeline.py, with the results producer of each
transport sending to a real local Kafka broker. Microseconds per frame (median of --rounds).

  headers      FrameMeta.from_headers: the frame's headers parsed and validated
  decode       JPEG validated and decoded to the model's input (OpenCV, one thread)
  score json   the frame-scores record: the pydantic model built and dumped, and the hot loop's writer
  send         ResultProducer.send of one score record, without waiting (per transport), then the
               acknowledgement of the whole burst (flush, per frame)
  metrics      the worker's per-frame metrics (`Worker._record_metrics` on a batch of 32, one camera)

    .venv/bin/python bench/publish_cost.py            # about 30 s
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prometheus_client import CollectorRegistry
from synthetic_frames import make_jpegs

from inspector.camera_labels import CameraLabels
from inspector.contracts import FrameMeta, FrameScore, frame_score_json
from inspector.decode.jpeg import decode_jpeg
from inspector.kafka.kafka_python.clients import create_topics
from inspector.kafka.local_broker import LocalKafka
from inspector.kafka.transport import client_types
from inspector.settings import KafkaSettings, Settings
from inspector.stream.batch_scoring import ScoredBatch, ScoredFrame
from inspector.stream.metrics import build_metrics
from inspector.stream.score_window import RollingScoreQuantiles
from inspector.stream.worker import Worker


def per_frame_us(work: Callable[[], object], frames: int, rounds: int) -> float:
    """Median over `rounds` of the microseconds per frame of `work`, which handles `frames` frames."""
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        work()
        runs.append((time.perf_counter() - t0) / frames * 1e6)
    return round(statistics.median(runs), 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--transports", default="kafka-python,confluent")
    ap.add_argument("--out", type=Path, default=Path("bench/out/publish_cost.json"))
    args = ap.parse_args()
    n, rounds = args.frames, args.rounds
    jpegs = make_jpegs(200)
    metas = [FrameMeta(frame_id=f"f-{i:08d}", camera_id="cam-1", sequence=i, captured_ns=time.time_ns())
             for i in range(n)]
    headers = [meta.to_headers() for meta in metas]
    payload = [(meta, 0.1234 + i * 1e-3, 1.5) for i, meta in enumerate(metas)]
    res: dict = {"frames": n, "rounds": rounds, "date": time.strftime("%Y-%m-%d"), "us_per_frame": {}}
    us = res["us_per_frame"]
    us["headers"] = per_frame_us(lambda: [FrameMeta.from_headers(h) for h in headers], n, rounds)
    us["decode"] = per_frame_us(lambda: [decode_jpeg(jpegs[i % len(jpegs)], size=256, max_bytes=1 << 23,
                                                     max_pixels=1 << 24) for i in range(n // 4)], n // 4, rounds)
    us["score_json_pydantic"] = per_frame_us(lambda: [FrameScore.for_frame(
        m, score=s, threshold=t, alert=False, scored_ns=1, model_version="v1").to_json() for m, s, t in payload],
        n, rounds)
    us["score_json_hot_loop"] = per_frame_us(lambda: [frame_score_json(
        m, score=s, threshold=t, alert=False, scored_ns=1, model_version="v1") for m, s, t in payload], n, rounds)
    values = [frame_score_json(m, score=s, threshold=t, alert=False, scored_ns=1, model_version="v1")
              for m, s, t in payload]

    # The per-frame metrics, through the worker's own method on a stand-in that carries what it reads.
    metrics = build_metrics(CollectorRegistry())
    worker = Worker.__new__(Worker)
    settings = Settings()
    worker.metrics, worker.cameras = metrics, CameraLabels(settings.limits.max_cameras, metrics)
    worker._recent_scores = RollingScoreQuantiles(metrics.score_rolling, settings.http.score_window_s)
    batches = [ScoredBatch([ScoredFrame(None, m, s, t) for m, s, t in payload[i:i + 32]], [], None, 0)  # type: ignore[arg-type]
               for i in range(0, n, 32)]
    us["metrics"] = per_frame_us(lambda: [worker._record_metrics(b, time.time_ns()) for b in batches], n, rounds)

    with LocalKafka(heap="1g") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        create_topics(kafka, {"cost-scores": 1})
        for transport in [t for t in args.transports.split(",") if t]:
            try:
                _, producer_type = client_types(transport)
                producer = producer_type(kafka.model_copy(update={"transport": transport}), max_request_bytes=1 << 20)
            except Exception as exc:  # e.g. confluent-kafka not installed
                print(f"{transport}: skipped ({type(exc).__name__}: {exc})")
                continue
            try:
                producer.flush_and_check([producer.send("cost-scores", "cam-1", values[0], [], "warm-up")])
                sends, acks = [], []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    pending = [producer.send("cost-scores", "cam-1", v, [], "score") for v in values]
                    t1 = time.perf_counter()
                    producer.wait_acknowledged(pending)
                    t2 = time.perf_counter()
                    sends.append((t1 - t0) / n * 1e6)
                    acks.append((t2 - t1) / n * 1e6)
                us[f"send_{transport}"] = round(statistics.median(sends), 2)
                us[f"acknowledge_{transport}"] = round(statistics.median(acks), 2)
            finally:
                producer.close()
    for name, value in us.items():
        print(f"{name:28s} {value:8.2f} us/frame")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
