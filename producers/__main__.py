"""`python -m producers SOURCE [TARGET]` or `python -m producers --cameras cameras.yaml`: publish frames to
Kafka from a synthetic stream, a folder, a video file, a camera, or every camera of a cameras file (.yaml or
.toml, see producers/cameras.py). Settings come from INSPECTOR_* variables; flags override them.

`python -m producers belt --line line.yaml --camera-id cam-1 [--duration-s N] [--truth-out truth.jsonl]`: bananas
passing one camera of a lane of the line file (one process per lane's camera), with the ground truth of every
object (one JSON line each, arrival at the ejector in ns since the epoch) for inspector/sorter/belt_report.py."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from inspector.errors import ConfigError, InspectorError
from inspector.process import configure_logging
from inspector.settings import ProducerSettings, Settings, load_settings, quiet_capture_library
from inspector.sorter.line_file import load_line
from inspector.synthetic.belt import camera_ready_file, write_truth
from producers.base import Publisher, PublishStats
from producers.belt import BeltSource
from producers.cameras import CameraConfig, load_cameras
from producers.line import LineProducer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m producers", description=__doc__)
    p.add_argument("source", nargs="?", choices=["synthetic", "folder", "video", "camera", "belt"])
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
    belt = p.add_argument_group("belt", "frames sized as the line file says; --fps, --defect-rate, --seed apply")
    belt.add_argument("--line", type=Path, help="the line file (.yaml or .toml) with the camera's lane")
    belt.add_argument("--objects-per-second", type=float, default=4.0, help="bananas passing the camera (4)")
    belt.add_argument("--duration-s", type=float, help="stop after this long (instead of --count)")
    belt.add_argument("--truth-out", type=Path, help="write every object's ground truth here (JSON lines)")
    belt.add_argument("--prerender", action="store_true",
                      help="render every frame before publishing (needs --duration-s or --count)")
    belt.add_argument("--start-file", type=Path,
                      help="with --prerender: once rendered, create START_FILE.CAMERA_ID.ready, then wait for "
                      "START_FILE before the first frame (cameras rendering side by side start together)")
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


def belt_source(args: argparse.Namespace, settings: ProducerSettings) -> tuple[BeltSource, ProducerSettings]:
    """The belt camera the flags describe, and its producer settings (frame size from the line file, count)."""
    if args.line is None:
        raise ConfigError("the belt source needs --line LINE_FILE")
    geometry = load_line(args.line).camera(settings.camera_id)
    if geometry is None:
        raise ConfigError(f"{args.line}: no lane has camera {settings.camera_id}; name one with --camera-id")
    if args.duration_s is not None and args.count is not None:
        raise ConfigError("give --duration-s or --count, not both")
    count = round(args.duration_s * settings.fps) if args.duration_s is not None else settings.count
    if args.prerender and not count:
        raise ConfigError("--prerender needs --duration-s or --count")
    if args.start_file is not None and not args.prerender:
        raise ConfigError("--start-file needs --prerender")
    settings = settings.model_copy(update={"width": geometry.frame_width_px, "height": geometry.frame_height_px,
                                           "count": count})
    source = BeltSource(geometry, settings, objects_per_second=args.objects_per_second,
                        prerender_frames=count if args.prerender else 0)
    return source, settings


def run_belt(source: BeltSource, publisher: Publisher, truth_out: Path | None,
             start_file: Path | None = None) -> PublishStats:
    """Publish the belt until it ends or a signal stops it, then write the truth of every object shown."""
    signal.signal(signal.SIGTERM, lambda *_: source.stop())
    signal.signal(signal.SIGINT, lambda *_: source.stop())
    try:
        if start_file is not None:
            camera_ready_file(start_file, publisher.settings.camera_id).touch()
            while not start_file.exists() and not source.stopped:
                time.sleep(0.005)
        stats = publisher.publish(source)
    finally:
        publisher.close()
        if truth_out is not None:
            objects = source.objects()
            write_truth(truth_out, objects)
            print(f"truth: {len(objects)} objects ({sum(o.defective for o in objects)} defective) in {truth_out}")
    return stats


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
        if args.source == "belt":
            source, producer = belt_source(args, settings.producer)
            stats = {producer.camera_id: run_belt(source, Publisher(settings.kafka, producer), args.truth_out,
                                                  args.start_file)}
            return report(stats)
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
    return report(stats)


def report(stats: dict[str, PublishStats]) -> int:
    """One line per camera; the exit code: 0 when every frame was delivered."""
    for camera_id, s in stats.items():
        rate = s.sent / s.seconds if s.seconds else 0.0
        print(f"{camera_id}: sent {s.sent} frames ({s.acked} acknowledged, {s.failed} failed, {s.dropped} dropped, "
              f"{s.skipped} skipped) in {s.seconds:.1f}s = {rate:.0f} frames/s; labels {s.labels}")
    return 0 if all(s.failed == 0 for s in stats.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
