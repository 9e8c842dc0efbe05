"""End-to-end benchmark through a real local Kafka broker (Apache Kafka, KRaft, on this machine).

In one run, on the same frames (~20 KB synthetic 256x256 JPEGs):
  1. bare model     the default model scoring pre-decoded batches in this process (the ceiling)
  2. worker         `inspector serve` draining a backlog, default model           -> frames/s, CPU use
                    (1 and 2 interleaved for --rounds rounds, with each transport; medians compared)
  3. null worker    the same with a model that returns its input (transport + decode cost)
  4. naive worker   poll one -> decode -> score -> produce -> flush -> commit, per message
  5. two workers    null model, one consumer group, 4 partitions, vs one
  6. latency        the default worker fed at half its capacity: capture -> score received, p50/p95/p99,
                    and the worker's own per-stage histograms
  7. evidence       (--evidence alone) every frame an alert (threshold 0): capture -> alert received with the
                    evidence drawn and published, and with it off, interleaved for --rounds rounds
  8. processes      (--processes N alone) `inspector serve --processes N` (0: the host's automatic number), per
                    transport: its drain of --frames from --producers camera processes on 16 partitions, and
                    the latency fed at half of that
Writes JSON and prints a table; see bench/RESULTS.md.

    .venv/bin/python bench/pipeline.py                 # about 3 minutes on 2 cores
    .venv/bin/python bench/pipeline.py --latency-only  # 2 and 6 alone, per transport (a short GPU check)
    .venv/bin/python bench/pipeline.py --evidence      # 7 alone: what evidence costs an alert
    .venv/bin/python bench/pipeline.py --processes 4 --producers 2 --batch 128   # 8 alone (a GPU host)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_runs import alert_latency_run, bare_model, drain, latency_run, naive_worker
from synthetic_frames import make_jpegs

from inspector.kafka.local_broker import LocalKafka
from inspector.model.runtime import pick_device
from inspector.settings import ModelSettings, prepare_torch_runtime


def main() -> int:  # noqa: C901 - the benchmark's runs, one after another in the order they are reported
    prepare_torch_runtime()  # as the CLI does for every command
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3000, help="backlog per drain run")
    ap.add_argument("--naive-frames", type=int, default=300)
    ap.add_argument("--latency-seconds", type=float, default=20)
    ap.add_argument("--batch", type=int, default=32, help="worker batch.max_size, and the bare model's batch")
    ap.add_argument("--transports", default="kafka-python,confluent",
                    help="Kafka client libraries to compare (the first is the default, used for the other runs)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="bare model and default-model drains, interleaved this many times (medians compared)")
    ap.add_argument("--latency-only", action="store_true",
                    help="only the default worker's drain (for its capacity) and the latency run, per transport")
    ap.add_argument("--evidence", action="store_true",
                    help="only the alert latency with evidence on and off, every frame alerting (run 7)")
    ap.add_argument("--evidence-rate", type=float, default=20.0, help="frames/s of the evidence runs")
    ap.add_argument("--processes", type=int, metavar="N",
                    help="only `inspector serve --processes N`'s drain and half-capacity latency, per transport")
    ap.add_argument("--producers", type=int, default=1, help="camera processes feeding the --processes runs")
    ap.add_argument("--out", type=Path, default=Path("bench/out/pipeline.json"))
    args = ap.parse_args()
    transports = [t for t in args.transports.split(",") if t]
    if "confluent" in transports:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            print("confluent-kafka is not installed: measuring kafka-python only", flush=True)
            transports.remove("confluent")

    def suffix(transport: str) -> str:  # of the result keys: none for the default transport
        return "" if transport == transports[0] else f"_{transport.replace('-', '_')}"

    logdir = args.out.parent / "pipeline-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    jpegs = make_jpegs(200)
    device = pick_device("auto")
    res: dict = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                             "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"},
                 "batch": args.batch,
                 "date": time.strftime("%Y-%m-%d"), "mean_jpeg_bytes": int(np.mean([len(j) for j in jpegs]))}
    print(f"frames: 256x256 JPEG q97, mean {res['mean_jpeg_bytes']} bytes", flush=True)
    with LocalKafka(heap="1g") as broker:
        if args.evidence:
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for round_ in range(args.rounds):
                for on in (False, True) if round_ % 2 == 0 else (True, False):
                    runs[on].append(alert_latency_run(broker, jpegs, args.evidence_rate, args.latency_seconds,
                                                      f"ev{round_}{int(on)}", logdir, evidence=on, batch=args.batch))
                    print(f"alert latency, evidence {'on' if on else 'off'}".ljust(31), runs[on][-1], flush=True)
            for on, key in ((False, "alert_latency_evidence_off"), (True, "alert_latency_evidence_on")):
                res[key] = {"runs": runs[on], **{f"median_{q}_ms": round(float(np.median(
                    [r["alert_e2e_ms"][q] for r in runs[on] if r["alert_e2e_ms"]])), 1) for q in ("p50", "p95", "p99")}}
                print(key.ljust(31), {k: v for k, v in res[key].items() if k != "runs"}, flush=True)
            return write_results(res, args.out)
        if args.processes is not None:
            for transport in transports:
                t = suffix(transport)
                key = f"processes_{args.processes or 'auto'}"
                res[f"{key}_drain{t}"] = drain(broker, jpegs, args.frames, f"pd{t}", null=False, batch=args.batch,
                                               transport=transport, logdir=logdir, processes=args.processes,
                                               partitions=16, producers=args.producers)
                print(f"{args.processes or 'auto'} processes, {transport}".ljust(31), res[f"{key}_drain{t}"], flush=True)
                half = max(5.0, (res[f"{key}_drain{t}"]["frames_per_s"] or 10.0) / 2)
                res[f"{key}_latency_half_capacity{t}"] = latency_run(
                    broker, jpegs, half, args.latency_seconds, f"pl{t}", logdir, batch=args.batch, transport=transport,
                    processes=args.processes, partitions=16, producers=args.producers)
                print("  latency at half capacity".ljust(31), res[f"{key}_latency_half_capacity{t}"], flush=True)
            return write_results(res, args.out)
        if args.latency_only:
            for transport in transports:
                t = suffix(transport)
                res[f"worker_default{t}"] = drain(broker, jpegs, args.frames // 3, f"wd{t}", null=False,
                                                  batch=args.batch, transport=transport, logdir=logdir)
                print(f"worker, default model, {transport}".ljust(31), res[f"worker_default{t}"], flush=True)
                half = max(5.0, res[f"worker_default{t}"]["frames_per_s"] / 2)
                res[f"latency_half_capacity{t}"] = latency_run(broker, jpegs, half, args.latency_seconds,
                                                               f"lat{t}", logdir, batch=args.batch, transport=transport)
                print(f"latency at half capacity, {transport}".ljust(31), res[f"latency_half_capacity{t}"], flush=True)
            return write_results(res, args.out)
        # Worker ÷ bare model in the same weather: this machine is shared, so the bare model and the default-model
        # drains of each transport are interleaved for a few rounds, and the medians compared.
        # The bare model both ways: one batch at a time on all of torch's threads, and as the worker runs it on
        # the CPU (model.cpu_streams batches at once; on CUDA the two are the same).
        streams = ModelSettings().cpu_streams if device.type == "cpu" else 1
        bare: dict[int, list[float]] = {1: [], streams: []}

        def measure_bare() -> None:
            for n in bare:
                bare[n].append(bare_model(jpegs, args.batch, seconds=3.0, streams=n)["frames_per_s"])
            print(f"bare model (batch {args.batch}), streams {'/'.join(map(str, bare))}".ljust(31),
                  "/".join(str(runs[-1]) for runs in bare.values()), flush=True)

        measure_bare()
        defaults: dict[str, list[dict]] = {transport: [] for transport in transports}
        for round_ in range(args.rounds):
            for transport in transports if round_ % 2 == 0 else transports[::-1]:
                defaults[transport].append(drain(broker, jpegs, args.frames // 3, f"wd{round_}{suffix(transport)}",
                                                 null=False, batch=args.batch, transport=transport, logdir=logdir))
                print(f"worker, default model, {transport}".ljust(31), defaults[transport][-1], flush=True)
            measure_bare()
        res["bare_model"] = {"batch": args.batch, "frames_per_s_runs": bare[1],
                             "frames_per_s": round(float(np.median(bare[1])), 1)}
        res["bare_model_as_served"] = {"batch": args.batch, "streams": streams, "frames_per_s_runs": bare[streams],
                                       "frames_per_s": round(float(np.median(bare[streams])), 1)}
        for transport, runs in defaults.items():
            median = sorted(runs, key=lambda r: r["frames_per_s"])[len(runs) // 2]
            res[f"worker_default{suffix(transport)}"] = {**median,
                                                        "frames_per_s_runs": [r["frames_per_s"] for r in runs]}
        res["worker_null"] = drain(broker, jpegs, args.frames, "wn", null=True, batch=args.batch, logdir=logdir)
        print("worker, null model             ", res["worker_null"], flush=True)
        res["two_workers_null"] = drain(broker, jpegs, 2 * args.frames, "w2", null=True, workers=2, partitions=4,
                                        batch=args.batch, logdir=logdir)
        print("two workers, null model        ", res["two_workers_null"], flush=True)
        res["naive_worker"] = naive_worker(broker, jpegs, args.naive_frames, "nv")
        print("naive worker, default model    ", res["naive_worker"], flush=True)
        half = max(5.0, res["worker_default"]["frames_per_s"] / 2)
        res["latency_half_capacity"] = latency_run(broker, jpegs, half, args.latency_seconds, "lat", logdir,
                                                   batch=args.batch)
        print("latency at half capacity       ", res["latency_half_capacity"], flush=True)
        for transport in transports[1:]:  # the alternative client library, same runs, same broker
            t = transport.replace("-", "_")
            res[f"worker_null_{t}"] = drain(broker, jpegs, args.frames, f"wn-{t}", null=True, batch=args.batch,
                                            transport=transport, logdir=logdir)
            print(f"worker, null model, {transport}".ljust(31), res[f"worker_null_{t}"], flush=True)
            half = max(5.0, res[f"worker_default_{t}"]["frames_per_s"] / 2)
            res[f"latency_half_capacity_{t}"] = latency_run(broker, jpegs, half, args.latency_seconds,
                                                            f"lat-{t}", logdir, batch=args.batch, transport=transport)
            print(f"latency at half capacity, {transport}".ljust(31), res[f"latency_half_capacity_{t}"], flush=True)
    wd, wn = res["worker_default"]["frames_per_s"], res["worker_null"]["frames_per_s"]
    res["ratios"] = {
        "worker_vs_bare_model": round(wd / res["bare_model"]["frames_per_s"], 3),
        "worker_vs_bare_model_as_served": round(wd / res["bare_model_as_served"]["frames_per_s"], 3),
        "worker_vs_naive": round(wd / res["naive_worker"]["frames_per_s"], 2),
        "two_vs_one_null_workers": round((res["two_workers_null"]["frames_per_s"] or float("nan")) / wn, 2),
    }
    for transport in transports[1:]:
        t = transport.replace("-", "_")
        res["ratios"][f"{t}_vs_{transports[0].replace('-', '_')}_null"] = round(
            res[f"worker_null_{t}"]["frames_per_s"] / wn, 2)
        for bare_key in ("bare_model", "bare_model_as_served"):
            res["ratios"][f"{t}_worker_vs_{bare_key}"] = round(
                res[f"worker_default_{t}"]["frames_per_s"] / res[bare_key]["frames_per_s"], 3)
    print("ratios", res["ratios"])
    return write_results(res, args.out)


def write_results(res: dict, out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
