"""Scoring-stage benchmark: JPEG bytes -> decode -> preprocess -> model -> scores and maps.

Runs, in one process and on the same frames, the one-frame-at-a-time loop and batched paths (several batch
sizes; fp32 / bf16 autocast; channels_last or not; optional torch.compile; OpenCV decode in threads vs GPU
JPEG decode vs both at once), then the pipelined stage (the next batch decodes while this one scores, as in
the worker), and prints ratios against the one-frame loop. Writes JSON. Free of Kafka and pydantic, so it
runs on a bare GPU machine with torch, torchvision, OpenCV and safetensors.

`--small-batches` measures only the worker's score stage on small batches instead (the model runner as the worker
uses it: a uint8 batch from the host or a float batch already on the device in, scores on the host, maps left on
the device), per batch size, with the runner's CUDA graphs on and off: p50 / p99 ms per batch and frames/s.

    .venv/bin/python bench/scoring.py                      # default model, CPU or CUDA automatically
    .venv/bin/python bench/scoring.py --input-size 256     # a 256x256 model of the same architecture
    .venv/bin/python bench/scoring.py --compile --seconds 3
    .venv/bin/python bench/scoring.py --small-batches 1,4,16,64 --graphs both --out bench/out/small_batches.json
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

# As the worker does (settings.prepare_torch_runtime): idle OpenMP threads must not spin on the cores that
# the decode threads need (only effective before torch starts its thread pool, hence before the import), and
# large tensors sit on huge pages.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decode_pool import DecodePool
from stage_timing import call_times, machine, pin_host_buffer, sync, timed, timed_pipelined
from synthetic_frames import LIMITS, make_jpegs

from inspector.decode.jpeg import decode_jpeg
from inspector.decode.preprocess import decode_jpegs_on_device, to_tensor
from inspector.model import artifact as artifact_io
from inspector.model.artifact import ModelArtifact
from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.family import score_batch
from inspector.model.runtime import ModelRunner, fuse_conv_bn, gflop_per_frame
from inspector.paths import DEFAULT_MODEL


def small_batches(args: argparse.Namespace, art: ModelArtifact, device: torch.device) -> int:
    """The score stage on small batches, per batch size and input, with CUDA graphs off and on (CPU: n/a)."""
    sizes = sorted({int(b) for b in args.small_batches.split(",") if b})
    size = art.config.image_size
    jpegs = make_jpegs(max(sizes), args.frame_size, quality=90)
    frames = np.stack([decode_jpeg(j, size=size, **LIMITS)[0] for j in jpegs])
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.graphs] if device.type == "cuda" else [None]
    results: dict = {"machine": machine(device), "date": time.strftime("%Y-%m-%d"),
                     "model": {"input_size": size, "source": str(args.model) if not args.input_size else "fresh"},
                     "stage": "score: uint8 host batch or float device batch -> scores on host, maps on device",
                     "runs": []}
    for graphs in modes:
        label = "n/a" if graphs is None else "on" if graphs else "off"
        runner = ModelRunner(art, device, cuda_graphs=bool(graphs))  # bf16 on CUDA, as the worker's default
        warm_s = runner.warm_up(runner.batch_shapes(max(sizes)))  # every padded size; the capture included
        print(f"graphs {label}: warm-up {warm_s:.2f} s, graphed batch sizes {runner.graphed_batch_sizes or '-'}",
              flush=True)
        for b in sizes:
            images = frames[:b]  # (b, S, S, 3) uint8
            on_device = to_tensor(images, device)  # (b, 3, S, S) float, as nvJPEG leaves a batch
            for source, call in (("host uint8", functools.partial(runner.score, images)),
                                 ("device float", functools.partial(runner.score_tensor, on_device))):
                ms = 1000 * call_times(call, args.seconds)
                row = {"path": f"score stage, batch {b}, {source} in, graphs {label}", "batch": b, "input": source,
                       "graphs": label, "graphed": b <= max(runner.graphed_batch_sizes, default=0),
                       "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
                       "frames_per_s": round(b * len(ms) / (ms.sum() / 1000), 1), "calls": len(ms),
                       "warm_up_seconds": round(warm_s, 2)}
                results["runs"].append(row)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2))  # as we go: a run cut short keeps its rows
                print(f"{row['path']:56s} p50 {row['p50_ms']:>8.3f} ms  p99 {row['p99_ms']:>8.3f} ms  "
                      f"{row['frames_per_s']:>9.1f} frames/s", flush=True)
        del runner, call, on_device  # the next mode's runner starts from free memory
        if device.type == "cuda":
            torch.cuda.empty_cache()
    by_key = {(r["batch"], r["input"], r["graphs"]): r for r in results["runs"]}
    for (b, source, label), row in by_key.items():
        off = by_key.get((b, source, "off"))
        if label == "on" and off is not None:
            row["x_graphs_off_p50"] = round(off["p50_ms"] / row["p50_ms"], 2)
            print(f"batch {b:>4}, {source} in: graphs {row['x_graphs_off_p50']}x faster at p50 "
                  f"({off['p50_ms']:.3f} -> {row['p50_ms']:.3f} ms)")
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


def main() -> int:  # noqa: C901 - the benchmark's runs, one after another in the order they are reported
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--input-size", type=int, default=0, help="bench a fresh model at this input size instead")
    p.add_argument("--frame-size", type=int, default=256, help="JPEG frame side in pixels")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--batch-sizes", default="", help="comma list (default: 8,32,64 on CPU; 32,128,256 on GPU)")
    p.add_argument("--decode-threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--decode-processes", type=int, default=0,
                   help="OpenCV decode processes (default: every core, less two on CUDA for the feeding threads)")
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per configuration")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    p.add_argument("--small-batches", default="",
                   help="comma list of batch sizes: measure only the score stage on these (see above)")
    p.add_argument("--graphs", choices=("both", "on", "off"), default="both",
                   help="--small-batches: with the runner's CUDA graphs on, off or both (CUDA only)")
    p.add_argument("--out", type=Path, default=Path("bench/out/scoring.json"))
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.decode_processes = args.decode_processes or max(1, (os.cpu_count() or 2) - (2 if device.type == "cuda" else 0))
    cv2.setNumThreads(1)  # as in the worker: the decode pool is the parallelism; OpenCV's own would oversubscribe
    if args.input_size:
        art = ModelArtifact(Autoencoder(AutoencoderConfig(image_size=args.input_size)))
    else:
        art = artifact_io.load(args.model)
    if args.small_batches:
        return small_batches(args, art, device)
    size = art.config.image_size
    model = fuse_conv_bn(art.model.to(device).eval())  # as the worker runs it (inspector.model.runtime)
    scoring = art.scoring
    jpegs = make_jpegs(args.frames, args.frame_size, quality=90)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b] or (
        [32, 128, 256] if device.type == "cuda" else [8, 32, 64])
    pool = ThreadPoolExecutor(args.decode_threads)
    gflop = gflop_per_frame(model, size, device)
    results: dict = {
        "machine": machine(device),
        "date": time.strftime("%Y-%m-%d"),
        "model": {"input_size": size, "gflop_per_frame": round(gflop, 3) if gflop else None,
                  "source": str(args.model) if not args.input_size else "fresh"},
        "frame_size": args.frame_size, "mean_jpeg_bytes": int(np.mean([len(j) for j in jpegs])),
        "runs": [],
    }

    def record(name: str, r: dict, **info: object) -> None:
        row = {"path": name, **info, **r}
        results["runs"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))  # as we go: a run cut short keeps its rows
        print(f"{name:58s} {r['frames_per_s']:>10.1f} frames/s  {r['ms_per_call']:>9.3f} ms/call", flush=True)

    def decode_cpu(batch: list[bytes]) -> np.ndarray:
        return np.stack([img for img, _ in pool.map(lambda b: decode_jpeg(b, size=size, **LIMITS), batch)])

    procs: DecodePool | None = None

    def decode_procs(batch: list[bytes]) -> torch.Tensor:
        """OpenCV in processes (shared memory) -> (B, 3, S, S) on the device."""
        nonlocal procs
        if procs is None:
            procs = DecodePool(args.decode_processes, size, max(batch_sizes), **LIMITS)
            results["shared_buffer_pinned"] = pin_host_buffer(procs.images, device)
        images, _ = procs.submit(batch).result()
        x = to_tensor(images, device)
        if device.type == "cuda":
            # The copy reads the shared buffer asynchronously; its slot is reused three batches later.
            torch.cuda.current_stream().synchronize()
        return x

    def decode_split(batch: list[bytes], cpu_share: float) -> torch.Tensor:
        """OpenCV processes and nvJPEG at once, each on its share of the batch -> (B, 3, S, S) on the device."""
        k = round(len(batch) * cpu_share)
        job = procs.submit(batch[:k]) if procs is not None and k else None
        on_gpu = decode_jpegs_on_device(batch[k:] if job else batch, size, device)
        if job is None:
            return on_gpu
        x = torch.cat([to_tensor(job.result()[0], device), on_gpu]).contiguous(memory_format=torch.channels_last)
        torch.cuda.current_stream().synchronize()  # as in decode_procs: the shared slot is read asynchronously
        return x

    def section(name: str, fn) -> None:
        """One configuration failing (a driver or compiler quirk) is recorded, and the others still run."""
        try:
            fn()
        except Exception as exc:
            traceback.print_exc()
            results.setdefault("errors", []).append({"section": name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{name}: FAILED ({type(exc).__name__}: {exc})", flush=True)

    # 1. The one-frame-at-a-time loop (how per-image inferencers work): decode, score, sync, per frame.
    frame_iter = iter(range(10**12))

    def one_frame() -> None:
        b = jpegs[next(frame_iter) % len(jpegs)]
        img, _ = decode_jpeg(b, size=size, **LIMITS)
        s, _m = score_batch(model, to_tensor([img], device, channels_last=False), scoring)
        s.cpu()

    model_cl = model  # channels_last is applied in place below for the batched paths
    record("one frame at a time, fp32, OpenCV decode", timed(one_frame, 1, args.seconds, device), batch=1)
    base = results["runs"][0]["frames_per_s"]

    # 2. Decode alone, at the largest batch: OpenCV in threads, then in processes; on CUDA also nvJPEG, and
    #    processes and nvJPEG at once on shares of the batch. The share starts from the two rates just measured
    #    (each decoder gets what it finishes in the same time); its neighbours are tried too, as a call's fixed
    #    costs shift the best split. The best share is the one the pipelined stage uses.
    big = (jpegs * (max(batch_sizes) // len(jpegs) + 1))[: max(batch_sizes)]
    record(f"decode only, OpenCV x{args.decode_threads} threads", timed(lambda: decode_cpu(big), len(big),
                                                                        args.seconds, device), batch=len(big))
    section("decode processes", lambda: record(
        f"decode only, OpenCV x{args.decode_processes} processes",
        timed(lambda: decode_procs(big), len(big), args.seconds, device), batch=len(big), decode="processes"))
    cpu_share = 1.0
    if device.type == "cuda":
        def gpu_decode_rows() -> None:
            nonlocal cpu_share
            record("decode only, nvJPEG batched (torchvision)",
                   timed(lambda: decode_jpegs_on_device(big, size, device), len(big), args.seconds, device),
                   batch=len(big), decode="nvJPEG")
            rates = {r.get("decode"): r["frames_per_s"] for r in results["runs"]}
            if procs is None or "processes" not in rates:
                return
            estimate = rates["processes"] / (rates["processes"] + rates["nvJPEG"])
            split_rates = {}
            for share in sorted({round(min(0.9, max(0.1, estimate + d)), 2) for d in (-0.1, 0.0, 0.1)}):
                record(f"decode only, split OpenCV processes {share:.0%} + nvJPEG",
                       timed(lambda share=share: decode_split(big, share), len(big), args.seconds, device),
                       batch=len(big), cpu_share=share, decode="split")
                split_rates[share] = results["runs"][-1]["frames_per_s"]
            cpu_share = max(split_rates, key=split_rates.__getitem__)

        section("gpu decode", gpu_decode_rows)

        # The worker's regime: batches of 128 of the pipeline benchmark's frames (q97, ~19 KB).
        def worker_decode_rows() -> None:
            worker_frames = (make_jpegs(32, args.frame_size, quality=97) * 4)[:128]
            record("decode only, nvJPEG batched, batch 128, q97 frames",
                   timed(lambda: decode_jpegs_on_device(worker_frames, size, device), 128, args.seconds, device),
                   batch=128, quality=97)
            if procs is not None:
                record(f"decode only, OpenCV x{args.decode_processes} processes, batch 128, q97 frames",
                       timed(lambda: decode_procs(worker_frames), 128, args.seconds, device), batch=128, quality=97)

        section("worker-sized decode", worker_decode_rows)
    results["cpu_share"] = cpu_share
    decoders = {"OpenCV threads": lambda chunk: to_tensor(decode_cpu(chunk), device)}
    if procs is not None:
        decoders["OpenCV processes"] = decode_procs
    if device.type == "cuda":
        decoders["nvJPEG"] = lambda chunk: decode_jpegs_on_device(chunk, size, device)
        if cpu_share < 1.0:
            decoders[f"split {cpu_share:.0%} OpenCV processes + nvJPEG"] = lambda chunk: decode_split(chunk,
                                                                                                    cpu_share)

    # 3. Model + scoring alone on pre-decoded tensors, then the whole stage, per batch size and precision.
    model_cl = model.to(memory_format=torch.channels_last)
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    bf16 = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext

    def model_only(m: torch.nn.Module, x: torch.Tensor, ctx):
        """One call: model + score on an already decoded batch, scores copied back."""
        def call() -> None:
            with ctx():
                s, _ = score_batch(m, x, scoring)
            s.cpu()
        return call

    def batch_rows(b: int) -> None:
        chunk = (jpegs * (b // len(jpegs) + 1))[:b]
        pre = to_tensor(decode_cpu(chunk), device)
        for prec in precisions:
            ctx = bf16 if prec == "bf16" else nullcontext
            for cl in (False, True):
                m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                x = pre if cl else pre.contiguous()

                record(f"model+score only, batch {b}, {prec}, {'channels_last' if cl else 'contiguous'}",
                       timed(model_only(m, x, ctx), b, args.seconds, device), batch=b, precision=prec,
                       channels_last=cl, stage="model")
            # The same, with BatchNorm left as separate layers (how the model trains): what folding is worth.
            unfolded = art.model.to(device).eval().to(memory_format=torch.channels_last)
            record(f"model+score only, batch {b}, {prec}, channels_last, BatchNorm not folded",
                   timed(model_only(unfolded, pre, ctx), b, args.seconds, device), batch=b, precision=prec,
                   stage="model", folded=False)
            m = model.to(memory_format=torch.channels_last)
            for dec_name, dec in decoders.items():
                def stage(chunk=chunk, ctx=ctx, m=m, dec=dec) -> None:
                    x = dec(chunk)
                    with ctx():
                        s, _ = score_batch(m, x, scoring)
                    s.cpu()

                record(f"JPEG->score, batch {b}, {prec}, channels_last, {dec_name} decode",
                       timed(stage, b, args.seconds, device), batch=b, precision=prec, stage="full",
                       decode=dec_name)

    for b in batch_sizes:
        section(f"batch {b}", lambda b=b: batch_rows(b))
    model_cl = model.to(memory_format=torch.channels_last)

    # 4. torch.compile (max-autotune on CUDA) of the channels_last model, at the largest batch.
    b = max(batch_sizes)
    chunk = (jpegs * (b // len(jpegs) + 1))[:b]
    best_model = model_cl
    if args.compile:
        def compile_rows() -> None:
            nonlocal best_model
            pre = to_tensor(decode_cpu(chunk), device)
            t0 = time.perf_counter()
            # In place on a copy, as the runner does: the family's `score` then calls the compiled forward.
            compiled = copy.deepcopy(model_cl)
            compiled.compile(mode="max-autotune" if device.type == "cuda" else "default")
            with bf16():
                score_batch(compiled, pre, scoring)
            sync(device)
            compile_s = time.perf_counter() - t0

            def compiled_only() -> None:
                with bf16():
                    s, _ = score_batch(compiled, pre, scoring)
                s.cpu()

            record(f"model+score only, batch {b}, {precisions[-1]}, torch.compile",
                   timed(compiled_only, b, args.seconds, device), batch=b, compile_seconds=round(compile_s, 1),
                   stage="model", compiled=True)
            best_model = compiled

        section("compile", compile_rows)

    # 5. The whole stage pipelined as in the worker: decode of the next batch overlaps scoring of this one.
    def score_fn(x: torch.Tensor) -> None:
        with bf16():
            s, _ = score_batch(best_model, x, scoring)
        s.cpu()

    tag = ", torch.compile" if best_model is not model_cl else ""
    for dec_name, dec in decoders.items():
        section(f"pipelined {dec_name}", lambda dec_name=dec_name, dec=dec: record(
            f"JPEG->score pipelined, batch {b}, {precisions[-1]}{tag}, {dec_name} decode",
            timed_pipelined(dec, score_fn, chunk, args.seconds, device), batch=b, precision=precisions[-1],
            stage="full", decode=dec_name, pipelined=True, compiled=bool(tag)))

    for row in results["runs"]:
        row["x_one_frame_loop"] = round(row["frames_per_s"] / base, 2)
    best_full = max((r for r in results["runs"] if r.get("stage") == "full"), key=lambda r: r["frames_per_s"])
    best_model = max((r for r in results["runs"] if r.get("stage") == "model"), key=lambda r: r["frames_per_s"])
    results["summary"] = {
        "one_frame_loop_fps": base,
        "best_full_stage": {k: best_full[k] for k in ("path", "frames_per_s", "x_one_frame_loop")},
        "best_model_only": {k: best_model[k] for k in ("path", "frames_per_s", "x_one_frame_loop")},
    }
    print(f"\nbest JPEG->score: {best_full['frames_per_s']:.0f} frames/s = {best_full['x_one_frame_loop']}x the "
          f"one-frame loop ({base:.0f} frames/s) on {results['machine']['device']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    if procs is not None:
        procs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
