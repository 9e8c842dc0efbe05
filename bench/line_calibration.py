"""`inspector calibrate --from-line` on a synthetic line, offline: two cameras (one as trained, one whose light is
stronger), each 5 minutes of frames scored by the default model (the worker's scoring; no Kafka: the CLI's reading
of the scores topic is proven by tests/integration/test_line_calibration.py), per-camera thresholds proposed from
the first 5 minutes by the CLI's own `propose_thresholds`, and the false-alarm and alert rates on the next 5
minutes at the threshold in force before and after.

    .venv/bin/python bench/line_calibration.py                  # 5 frames/s, 5 % defective, light x1.35 (~6 min)
    .venv/bin/python bench/line_calibration.py --fps 2 --gain 1.5

See bench/RESULTS.md ("Honest thresholds").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.contracts import FrameScore
from inspector.decode.jpeg import decode_jpeg
from inspector.model.artifact import load
from inspector.model.runtime import ModelRunner
from inspector.paths import DEFAULT_MODEL
from inspector.settings import ProducerSettings, prepare_torch_runtime
from inspector.training.line_calibration import proposal_table, propose_thresholds
from producers.synthetic import planned_stream


def camera_scores(runner: ModelRunner, camera: str, seed: int, n_frames: int, defect_rate: float,
                  gain: float) -> list[FrameScore]:
    """A camera's frames as it sends them (JPEG q90, its light `gain` times training's), scored; FrameScores as the
    worker publishes them (labels as the synthetic source sets them)."""
    frames = planned_stream(ProducerSettings(seed=seed, fps=0), n_frames=n_frames,
                            n_defects=round(n_frames * defect_rate))
    scores: list[FrameScore] = []
    for start in range(0, n_frames, 64):
        chunk = frames[start:start + 64]
        jpegs = [cv2.imencode(".jpg", np.clip(f.image.astype(np.float32) * gain, 0, 255).astype(np.uint8),
                              [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in chunk]
        images = np.stack([decode_jpeg(j, size=runner.size, max_bytes=1 << 26, max_pixels=1 << 24)[0] for j in jpegs])
        for i, (frame, score) in enumerate(zip(chunk, runner.score(images)[0].tolist(), strict=True)):
            scores.append(FrameScore(frame_id=f"{camera}-{start + i}", camera_id=camera, seq=start + i, score=score,
                                     thr=0.0, alert=False, captured_ns=0, scored_ns=0,
                                     model_version=runner.artifact.model_version, label=frame.label))
    return scores


def rates(scores: list[FrameScore], threshold: float) -> tuple[float, float, float]:
    """(false alarms on good frames, defective frames alerted, alerts on all frames) at `threshold`."""
    good = np.array([s.score for s in scores if s.label == "good"])
    defective = np.array([s.score for s in scores if s.label != "good"])
    every = np.array([s.score for s in scores])
    return float((good > threshold).mean()), float((defective > threshold).mean()), float((every > threshold).mean())


def main() -> int:
    prepare_torch_runtime()  # as the CLI does for every command
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--minutes", type=float, default=5.0, help="each window: calibrate on one, measure the next")
    p.add_argument("--defect-rate", type=float, default=0.05)
    p.add_argument("--gain", type=float, default=1.35, help="the bright camera's light, as a multiple of training's")
    p.add_argument("--target", type=float, default=0.01)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = p.parse_args()
    artifact = load(args.model)
    runner = ModelRunner(artifact, torch.device("cpu"), bf16=False)
    n = round(args.fps * args.minutes * 60)
    cameras = {"cam-as-trained": 1.0, "cam-bright": args.gain}
    windows = {camera: [camera_scores(runner, camera, 100 * k + window, n, args.defect_rate, gain)
                        for window in (1, 2)] for k, (camera, gain) in enumerate(cameras.items())}
    first = [s for camera in cameras for s in windows[camera][0]]
    proposals = propose_thresholds(first, model_version=artifact.model_version, target_false_alarm=args.target,
                                   current=artifact.threshold_for)
    print(f"{n} frames per camera per window ({args.minutes:g} min at {args.fps:g} frames/s, "
          f"{args.defect_rate:.0%} defective); bright camera's light x{args.gain:g}; target {args.target:.0%}")
    print("\n".join(proposal_table(proposals)))
    for proposal in proposals:
        after = windows[proposal.camera_id][1]
        old_fa, old_caught, old_alerts = rates(after, proposal.current)
        line = (f"{proposal.camera_id}: next window at the file's threshold: false alarms {old_fa:.2%}, defective "
                f"frames alerted {old_caught:.1%}, alerts {old_alerts:.2%}")
        if proposal.proposed is not None:
            new_fa, new_caught, new_alerts = rates(after, proposal.proposed)
            line += (f"; at the line's: false alarms {new_fa:.2%} ({new_fa / args.target:.2f}x the target), "
                     f"defective frames alerted {new_caught:.1%}, alerts {new_alerts:.2%}")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
