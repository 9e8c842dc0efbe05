"""The line's last metre, measured: belt cameras -> a real local Kafka broker -> one CPU worker (default model) ->
`inspector sort` -> a stand-in PLC (a real Modbus TCP server) recording every coil change; each object's fate
scored against the belt's ground truth (inspector/sorter/belt_run.py, the same path as `make demo`).

Two lanes, a camera each (15 fps: 30 frames/s in all), about 4 bananas a second per lane, each seen in 2-5 frames,
5 % defective; frames are rendered before the run (the figures measure the line, not the renderer); the ejector
0.6 s downstream of the camera. Then the same at a higher frame rate (--fast-fps, per lane).

    .venv/bin/python bench/belt.py                       # 60 s at 15 fps per lane, then 60 s at 22 fps per lane
    .venv/bin/python bench/belt.py --seconds 120 --fast-fps 0 --repeat 3
    .venv/bin/python bench/belt.py --calibrate-seconds 90  # each rate's line calibrated first (below)

The broker is fresh, so the belt first runs --warm-up-seconds (30) on topics of its own, not measured: a new
broker's JVM compiles its produce and fetch paths in the first half minute of traffic and took up to one of the
two cores meanwhile (2026-12-06), which a line's long-running broker has long done. The local broker now compiles
with C1 alone, which halves that, and the warm-up stays: a fresh worker and broker still stall at times (bench/
RESULTS.md, "A broker for minutes"). --warm-up-seconds 0 measures a cold broker.

With --calibrate-seconds S each measured run follows one of S seconds on another stretch of the same belt (another
seed), after which the thresholds are calibrated on the line as `inspector calibrate --from-line` does: per camera,
the conformal quantile at --target-far of the frames the worker scored, the belt's labelled defects left out.

Prints a table and writes JSON to bench/out/belt.json; see bench/RESULTS.md ("The line's last metre").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.kafka.local_broker import LocalKafka
from inspector.model import artifact as artifact_io
from inspector.process import freeze_long_lived_objects
from inspector.settings import Settings, load_settings
from inspector.sorter.belt_run import BeltPlan, BeltRun, run_belt
from inspector.training.line_calibration import proposal_table, propose_from_line, with_line_thresholds


def histogram_quantile(metrics_text: str, name: str, quantile: float) -> float:
    """Prometheus's histogram_quantile over a histogram's buckets (all label sets summed), from /metrics text."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = buckets.get(float(bound), 0.0) + float(line.rsplit(" ", 1)[1])
    if not buckets:
        return float("nan")
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total == 0:
        return float("nan")
    rank, previous_bound, previous_count = quantile * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / max(buckets[bound] - previous_count, 1e-9)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, buckets[bound]
    return bounds[-1]


def figures(run: BeltRun, plan: BeltPlan) -> dict[str, object]:
    report, tally, aim = run.report, run.tally, run.aim_report()
    return {
        "geometry": plan.geometry, "lanes": plan.lanes, "fps_per_lane": plan.fps, "objects_per_second_per_lane": plan.objects_per_second,
        "seconds": round(tally.seconds, 1), "frames_scored": tally.scores,
        "frames_per_second": round(tally.scores / tally.seconds, 1),
        "capture_to_score_ms": {"p50": round(tally.latency_ms(0.5), 1), "p99": round(tally.latency_ms(0.99), 1)},
        "frame_false_alarm_rate": round(tally.false_alerts / max(tally.good_frames, 1), 4),
        "frame_detection_rate": round(tally.defect_frames_alerted / max(tally.defect_frames, 1), 4),
        "objects": {"defective": report.n_defective, "good": report.n_good},
        "ejection_recall": round(report.recall, 4),
        "false_ejection_rate": round(report.false_ejection_rate, 4),
        "late_defective": report.count("late", defective=True), "late_good": report.count("late", defective=False),
        "not_ejected_defective": report.count("not_ejected", defective=True),
        "ejected_off_time_defective": report.count("ejected_off_time", defective=True),
        "spurious_pulses": report.spurious_pulses, "repeated_pulses": report.repeated_pulses,
        "defective_missed": [{"object": r.object.object_id, "label": r.object.label, "outcome": r.outcome,
                              "error_ms": None if r.error_ns is None else round(r.error_ns / 1e6, 1)}
                             for r in report.results if r.object.defective and r.outcome != "ejected_on_time"],
        "fire_error_ms": {"p50": round(report.fire_error_ms(0.5), 1), "p99": round(report.fire_error_ms(0.99), 1)},
        "aim_error_ms": {"p50": round(aim.fire_error_ms(0.5), 1), "p99": round(aim.fire_error_ms(0.99), 1)},
        "sorter_plc_timing_ms": {"p50": round(run.schedule_error_ms(0.5), 2),
                                 "p99": round(run.schedule_error_ms(0.99), 2)},
        "sorter_decision_ms": {
            "p50": round(1000 * histogram_quantile(run.sorter_metrics, "inspector_sorter_decision_seconds", 0.5), 3),
            "p99": round(1000 * histogram_quantile(run.sorter_metrics, "inspector_sorter_decision_seconds", 0.99), 3)},
    }


def run_settings(bootstrap_servers: str, run: str, model: Path | None = None) -> Settings:
    """A run's settings: topics and groups of its own on the one broker, the CPU, and the model file given."""
    return load_settings(kafka={"bootstrap_servers": bootstrap_servers, "frames_topic": f"frames-{run}",
                                "alerts_topic": f"alerts-{run}", "scores_topic": f"scores-{run}",
                                "group_id": f"inspector-{run}", "ejections_topic": f"ejections-{run}"},
                         sorter={"late_topic": f"late-{run}", "group_id": f"sorter-{run}"},
                         model={"device": "cpu", **({"path": str(model)} if model else {})})


def calibrate_on_the_line(settings: Settings, plan: BeltPlan, seconds: float, target_far: float,
                          work_dir: Path) -> tuple[Path, dict[str, float]]:
    """Run `seconds` of another stretch of the belt, then calibrate each camera's threshold on the frames the
    worker scored -> (the recalibrated model file, each camera's threshold)."""
    calibration = BeltPlan(duration_s=seconds, lanes=plan.lanes, fps=plan.fps,
                           objects_per_second=plan.objects_per_second, defect_rate=plan.defect_rate,
                           seed=plan.seed + 1000, geometry=plan.geometry)
    (work_dir / "calibration").mkdir()
    run_belt(settings, calibration, work_dir / "calibration", progress=lambda text: print(text, flush=True))
    artifact = artifact_io.load(Path(settings.model.path))
    line = propose_from_line(settings, artifact, seconds + 600, target_far)
    print("\n".join(proposal_table(line.cameras)))
    if not line.any_proposed:
        raise SystemExit(f"{seconds:g} s of belt hold too few good frames for a threshold at {target_far:.2%}")
    path = work_dir / "line-calibrated.safetensors"
    artifact_io.save(with_line_thresholds(artifact, line.cameras), path)
    return path, {p.camera_id: round(p.proposed, 4) for p in line.cameras if p.proposed is not None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--fps", type=float, default=15.0, help="per lane")
    p.add_argument("--fast-fps", type=float, default=22.0, help="per lane, the second run (0: none)")
    p.add_argument("--objects-per-second", type=float, default=4.0, help="per lane")
    p.add_argument("--defect-rate", type=float, default=0.05)
    p.add_argument("--geometry", action="append", default=[], metavar="KEY=VALUE",
                   help="a line-file geometry option over the belt's (e.g. min_alerts=2), repeatable")
    p.add_argument("--calibrate-seconds", type=float, default=0.0,
                   help="calibrate the thresholds on this much of the line before each measured run (0: the stored)")
    p.add_argument("--target-far", type=float, default=0.01, help="the line calibration's false-alarm target")
    p.add_argument("--warm-up-seconds", type=float, default=30.0,
                   help="belt run first on topics of its own, not measured, so that the broker is warm (0: none)")
    p.add_argument("--repeat", type=int, default=1, help="measured runs per rate")
    p.add_argument("--out", type=Path, default=Path("bench/out/belt.json"))
    args = p.parse_args()
    runs: list[dict[str, object]] = []
    results: dict[str, object] = {"machine": platform.node(), "cpu_count": os.cpu_count(),
                                  "date": time.strftime("%Y-%m-%d %H:%M"), "runs": runs}
    freeze_long_lived_objects()  # the stand-in PLC stamps each coil in this process: a pause here reads as lateness
    rates = [args.fps] * args.repeat + ([args.fast_fps] * args.repeat if args.fast_fps else [])
    geometry = {key: yaml.safe_load(value) for key, value in (g.split("=", 1) for g in args.geometry)}
    with LocalKafka() as broker:
        if args.warm_up_seconds:
            plan = BeltPlan(duration_s=args.warm_up_seconds, fps=args.fps, objects_per_second=args.objects_per_second,
                            defect_rate=args.defect_rate, seed=1007, geometry=geometry)
            print(f"warming the broker up: {args.warm_up_seconds:g} s of belt on topics of its own, not measured")
            with tempfile.TemporaryDirectory(prefix="belt-") as tmp:
                run = run_belt(run_settings(broker.bootstrap_servers, "warm-up"), plan, Path(tmp))
            print("\n".join(f"  warm-up: {line}" for line in run.summary_lines()))
            results["warm_up"] = figures(run, plan)
        for i, fps in enumerate(rates):
            settings = run_settings(broker.bootstrap_servers, str(i))
            plan = BeltPlan(duration_s=args.seconds, fps=fps, objects_per_second=args.objects_per_second,
                            defect_rate=args.defect_rate, geometry=geometry)
            thresholds: dict[str, float] = {}
            with tempfile.TemporaryDirectory(prefix="belt-") as tmp:
                if args.calibrate_seconds:
                    model, thresholds = calibrate_on_the_line(run_settings(broker.bootstrap_servers, f"{i}-line"),
                                                              plan, args.calibrate_seconds, args.target_far, Path(tmp))
                    settings = run_settings(broker.bootstrap_servers, str(i), model)
                run = run_belt(settings, plan, Path(tmp), progress=lambda text: print(text, flush=True))
                for line in [*run.summary_lines(), run.aim_line(), run.timing_line()]:
                    print(line)
            runs.append({**figures(run, plan), "line_calibrated_thresholds": thresholds or None})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
