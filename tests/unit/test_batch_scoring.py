"""The worker's score stage with the default model on the CPU (no broker): each alert carries its defect box and the
box of the banana it lies on, also when the batch was decoded on the GPU and the frame has to be read again."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from inspector.contracts import FrameMeta
from inspector.model.artifact import load
from inspector.model.runtime import ModelRunner
from inspector.model.scoring import peak_region
from inspector.settings import load_settings
from inspector.sorter.line_file import parse_line
from inspector.stream.batch_scoring import BatchScorer
from inspector.stream.metrics import build_metrics
from inspector.synthetic.belt import BeltStream, encode_jpeg
from tests.consumed import ConsumedFrame


def test_alerts_carry_the_box_of_the_banana_they_lie_on(default_model_path: Path) -> None:
    settings = load_settings(model={"path": default_model_path, "device": "cpu"}, kafka={"evidence_topic": ""})
    runner = ModelRunner(load(default_model_path), torch.device("cpu"))
    scorer = BatchScorer(settings, runner, build_metrics(CollectorRegistry()))
    line = parse_line({"defaults": {"belt_speed_m_s": 0.256, "metres_per_pixel": 0.001, "ejector_distance_m": 0.15},
                       "lanes": [{"id": "lane-1", "actuator": {"protocol": "log"}, "cameras": [{"id": "cam-1"}]}]})
    camera = line.camera("cam-1")
    assert camera is not None
    plans = list(itertools.islice(BeltStream(camera, fps=15, defect_rate=1.0, seed=2).frames(), 8))
    records = [ConsumedFrame("frames", 0, plan.index, b"cam-1", encode_jpeg(plan.render().image, 90),
                       FrameMeta(frame_id=f"f-{plan.index}", camera_id="cam-1", sequence=plan.index,
                                 captured_ns=1).to_headers()) for plan in plans]
    try:
        batch = scorer.start(records)
        scored = scorer.scored(batch)
        alerts = [frame for frame in scored.frames if frame.alert]
        assert len(alerts) >= 6  # every banana here is defective
        for frame in alerts:
            assert frame.object_box is not None
            middle = plans[frame.meta.sequence].reference_px[0]  # the banana's middle, in the frame's pixels
            assert abs((frame.object_box.x0 + frame.object_box.x1) / 2 - middle) <= 4
        # A batch decoded by nvJPEG leaves the frame's image on the GPU: the box reads the JPEG again, the same.
        decoded = [outcome for run in batch.decoding for outcome in run.result()]
        for frame in decoded[:3]:
            assert frame.image is not None
            # The brightest pixel of the frame is on the banana (the belt is darker): a seed on the fruit.
            seed = peak_region(frame.image.astype(np.float32).sum(axis=-1))
            on_host = scorer._object_box(frame, seed)
            reread = scorer._object_box(replace(frame, image=None), seed)
            assert on_host is not None and on_host == reread
    finally:
        scorer.shutdown()
