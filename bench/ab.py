"""Interleaved A/B of two worker variants on one local broker, against the bare model in the same weather.

This machine is shared and its speed drifts by ±15 % within minutes, so single runs of two variants compare
the weather, not the variants. Here each round measures the bare model, then drains a backlog with A and with B
(the order alternating), and the medians are compared. A variant is settings (`INSPECTOR_...=value`) and/or
another checkout of the project to run the worker from (`--a-tree`, e.g. a `git worktree` of an older commit).
With `--latency RATE` each round instead feeds each variant RATE frames/s for `--seconds` and compares the
latency (capture -> score read) p50 and p99.

    .venv/bin/python bench/ab.py --b INSPECTOR_MODEL__CPU_STREAMS=1 --rounds 3
    git worktree add /tmp/old HEAD~1 && .venv/bin/python bench/ab.py --a-tree /tmp/old
    .venv/bin/python bench/ab.py --latency 300 --null --a INSPECTOR_BATCH__MAX_WAIT_MS=10 --rounds 2
    .venv/bin/python bench/ab.py --latency 1000 --null --batch 128 --b INSPECTOR_KAFKA__TRANSPORT=confluent
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_runs import bare_model, drain, latency_run
from synthetic_frames import make_jpegs

from inspector.kafka.local_broker import LocalKafka


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for v in ("a", "b"):
        ap.add_argument(f"--{v}", nargs="*", default=[], metavar="NAME=VALUE", help=f"settings of variant {v}")
        ap.add_argument(f"--{v}-tree", type=Path, help=f"checkout that variant {v}'s worker runs from")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=1000, help="backlog per drain")
    ap.add_argument("--transport", default="kafka-python",
                    help="both variants' Kafka client, unless a variant sets INSPECTOR_KAFKA__TRANSPORT")
    ap.add_argument("--batch", type=int, default=32, help="worker batch.max_size (and the bare model's batch)")
    ap.add_argument("--null", action="store_true", help="both variants with the null model")
    ap.add_argument("--latency", type=float, metavar="RATE", help="compare latency at RATE frames/s, not drains")
    ap.add_argument("--seconds", type=float, default=10, help="length of each latency run")
    ap.add_argument("--out", type=Path, default=Path("bench/out/ab.json"))
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    variants = {v: ({k: val for k, _, val in (s.partition("=") for s in getattr(args, v))},
                    (getattr(args, f"{v}_tree") or root).resolve()) for v in ("a", "b")}
    logdir = args.out.parent / "ab-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    jpegs = make_jpegs(200)
    base_env = dict(os.environ)
    res: dict = {"variants": {v: {"settings": env, "tree": str(tree)} for v, (env, tree) in variants.items()},
                 "bare": [], "a": [], "b": []}
    with LocalKafka(heap="1g") as broker:
        for round_ in range(args.rounds):
            if not args.latency:
                res["bare"].append(bare_model(jpegs, args.batch, seconds=3.0)["frames_per_s"])
            for v in ("a", "b") if round_ % 2 == 0 else ("b", "a"):
                env, tree = variants[v]
                transport = env.get("INSPECTOR_KAFKA__TRANSPORT", args.transport)  # a variant may be the other client
                os.environ.clear()
                os.environ.update({**base_env, **env})
                os.chdir(tree)  # `python -m inspector` imports the package from the working directory
                try:
                    if args.latency:
                        run = latency_run(broker, jpegs, args.latency, args.seconds, f"ab{round_}{v}", logdir.resolve(),
                                          batch=args.batch, transport=transport, null=args.null)
                    else:
                        run = drain(broker, jpegs, args.frames, f"ab{round_}{v}", null=args.null, batch=args.batch,
                                    transport=transport, logdir=logdir.resolve())
                finally:
                    os.environ.clear()
                    os.environ.update(base_env)
                    os.chdir(root)
                if args.latency:
                    res[v].append(run["e2e_ms"])
                    print(round_, v, "latency ms", run["e2e_ms"], "batch p50", run["batch_size"]["p50"], flush=True)
                else:
                    res[v].append(run["frames_per_s"])
                    print(round_, v, run["frames_per_s"], "frames/s", run["stage_share"], "CPU", run["machine_cpu"],
                          flush=True)
        if not args.latency:
            res["bare"].append(bare_model(jpegs, args.batch, seconds=3.0)["frames_per_s"])
    if args.latency:
        res["median"] = {v: {q: statistics.median(r[q] for r in res[v]) for q in ("p50", "p99")} for v in ("a", "b")}
        res["b_vs_a"] = {q: round(res["median"]["b"][q] / res["median"]["a"][q], 3) for q in ("p50", "p99")}
        print(json.dumps({k: res[k] for k in ("median", "b_vs_a")}))
    else:
        bare = statistics.median(res["bare"])
        res["median"] = {k: statistics.median(res[k]) for k in ("bare", "a", "b")}
        res["vs_bare"] = {v: round(res["median"][v] / bare, 3) for v in ("a", "b")}
        res["b_vs_a"] = round(res["median"]["b"] / res["median"]["a"], 3)
        print(json.dumps({k: res[k] for k in ("median", "vs_bare", "b_vs_a")}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
