"""`python -m producers SOURCE [TARGET]` or `python -m producers --cameras cameras.yaml`: publish frames to
Kafka from a synthetic stream, a folder, a video file, a camera, or every camera of a cameras file (.yaml or
.toml, see producers/cameras.py). Settings come from INSPECTOR_* variables; flags override them."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from inspector.errors import ConfigError, InspectorError
from inspector.process import configure_logging
from inspector.settings import ProducerSettings, Settings, load_settings, quiet_capture_library
from producers.cameras import CameraConfig, load_cameras
from producers.line import LineProducer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m producers", description=__doc__)
    p.add_argument("source", nargs="?", choices=["synthetic", "folder", "video", "camera"])
    p.add_argument("target", nargs="?", help="folder path, video path, or camera index / RTSP or HTTP URL")
    p.add_argument("--cameras", type=Path, help="a cameras file (.yaml or .toml) instead of SOURCE")
    p.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz and /readyz here (0 = any free port)")
    p.add_argument("--bootstrap-servers")
    p.add_argument("--topic", help="frames topic (default: kafka.frames_topic)")
    p.add_argument("--camera-id")
    p.add_argument("--fps", type=float, help="target frames per second (0 = as fast as possible)")
    p.add_argument("--count", type=int, help="stop after this many frames (0 = no limit)")
    p.add_argument("--width", type=int, help="resize at the edge (0 = keep)")
    p.add_argument("--height", type=int)
    p.add_argument("--jpeg-quality", type=int)
    p.add_argument("--defect-rate", type=float, help="synthetic: share of defective bananas")
    p.add_argument("--seed", type=int)
    p.add_argument("--loop", action="store_true", help="folder/video: start again at the end")
    return p


def command_line_camera(args: argparse.Namespace, settings: ProducerSettings) -> CameraConfig:
    """The one camera that SOURCE [TARGET] describes."""
    if args.source == "synthetic":
        return CameraConfig(settings, "synthetic")
    if not args.target:
        raise ConfigError(f"the {args.source} source needs a target (path, index or URL)")
    target = args.target
    if args.source == "folder" and not Path(target).is_dir():
        raise ConfigError(f"folder not found: {target}")
    if args.source == "video" and not Path(target).is_file():
        raise ConfigError(f"video file not found: {target}")
    if args.source == "camera" and not (target.isdigit() or "://" in target):
        raise ConfigError(f"a camera is a device index or an rtsp:// or http:// URL, not {target!r}")
    return CameraConfig(settings, target, loop=args.loop)


def cameras_of(args: argparse.Namespace, settings: Settings) -> list[CameraConfig]:
    if (args.cameras is None) == (args.source is None):
        raise ConfigError("give either SOURCE [TARGET] or --cameras FILE")
    if args.cameras is not None:
        return load_cameras(args.cameras, settings.producer)
    return [command_line_camera(args, settings.producer)]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_capture_library()
    producer_overrides = {k: v for k, v in {
        "camera_id": args.camera_id, "fps": args.fps, "count": args.count, "width": args.width,
        "height": args.height, "jpeg_quality": args.jpeg_quality, "defect_rate": args.defect_rate,
        "seed": args.seed, "metrics_port": args.metrics_port}.items() if v is not None}
    kafka_overrides = {k: v for k, v in {"bootstrap_servers": args.bootstrap_servers,
                                         "frames_topic": args.topic}.items() if v is not None}
    try:
        settings = load_settings(producer=producer_overrides, kafka=kafka_overrides)
        configure_logging(settings.log_level)
        line = LineProducer(settings, cameras_of(args, settings))
    except InspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: line.stop())
    signal.signal(signal.SIGINT, lambda *_: line.stop())
    try:
        stats = line.run()
    finally:
        line.close()
    for camera_id, s in stats.items():
        rate = s.sent / s.seconds if s.seconds else 0.0
        print(f"{camera_id}: sent {s.sent} frames ({s.acked} acknowledged, {s.failed} failed, {s.dropped} dropped, "
              f"{s.skipped} skipped) in {s.seconds:.1f}s = {rate:.0f} frames/s; labels {s.labels}")
    return 0 if all(s.failed == 0 for s in stats.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
