"""The compute side of the worker's hot loop: decode a batch in threads (on CUDA the decode threads only validate,
and one more thread decodes the whole batch with nvJPEG on a CUDA stream of its own), then score it in a scoring
thread (one on CUDA, `model.cpu_streams` on the CPU), so that scoring never waits for the main thread's publishing
and committing."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from inspector.contracts import Box
from inspector.decode.preprocess import DeviceJpegDecoder
from inspector.evidence import Evidence, render
from inspector.kafka.transport import ConsumedRecord
from inspector.model.artifact import ModelArtifact
from inspector.model.runtime import ModelRunner
from inspector.model.scoring import defect_box
from inspector.model.threshold import is_defect
from inspector.settings import Settings
from inspector.stream.frame_decode import Decoded, decode_record
from inspector.stream.metrics import WorkerMetrics

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DeviceImages = tuple[list["torch.Tensor"], "torch.cuda.Event"]  # nvJPEG's images of a batch and their ready event


@dataclass
class Batch:
    """A polled batch on its way through decode and score, until the worker publishes it."""

    records: list[ConsumedRecord]
    decoding: list[Future[Decoded]] = field(default_factory=list)  # per record: its Decoded
    on_device: Future[DeviceImages | None] | None = None  # on CUDA: nvJPEG's images of the valid frames
    scoring: Future[Scored | None] | None = None  # its Scored, from the scoring thread
    dropped: threading.Event = field(default_factory=threading.Event)  # a rebalance took it: do not score it

    def is_scored(self) -> bool:
        return self.scoring is not None and self.scoring.done()


@dataclass
class Scored:
    """A batch after the score stage, all on the host: what publishing it needs."""

    decoded: list[Decoded]  # every record of the batch, in order
    good: list[Decoded]  # the scored frames
    bad: list[Decoded]  # the frames for the dead-letter topic
    scores: np.ndarray  # (len(good),) float32
    thresholds: list[float]  # per scored frame
    alerts: dict[int, Box | None]  # index into `good` -> defect box, for the frames over their threshold
    artifact: ModelArtifact  # the model that scored them (a hot reload may swap it before they are published)
    scored_ns: int
    evidence: dict[int, Future[Evidence]] = field(default_factory=dict)  # index into `good` -> rendering, per alert


class BatchScorer:
    """Decodes and scores batches in threads of its own: `start` a batch, optionally `score_ahead`, then take it
    `scored`. The model also warms up and reloads on a scoring thread."""

    def __init__(self, settings: Settings, runner: ModelRunner, metrics: WorkerMetrics) -> None:
        self.s = settings
        self.runner = runner
        self.m = metrics
        # nvJPEG decodes the whole batch on the GPU, in a thread of its own; the decode threads then only validate.
        self._nvjpeg = self._start_nvjpeg() if settings.batch.gpu_decode and runner.device.type == "cuda" else None
        self._nvjpeg_thread = ThreadPoolExecutor(1, thread_name_prefix="nvjpeg")
        cv2.setNumThreads(1)  # parallelism comes from the decode pool; OpenCV's own pool would oversubscribe
        self._decoder = ThreadPoolExecutor(settings.batch.decode_threads, thread_name_prefix="decode")
        # The model runs in threads of its own (warm-up, reloads and batches), one per stream of the runner.
        self._scorer = ThreadPoolExecutor(runner.streams, thread_name_prefix="score")
        # Alerts' evidence is drawn in a thread of its own, so that neither scoring nor the alert waits for it.
        self._evidence = ThreadPoolExecutor(1, thread_name_prefix="evidence") if settings.kafka.evidence_topic else None

    def warm_up(self) -> float:
        """Run the model on every batch shape it will see, in every scoring thread (on CUDA its cuBLAS and cuDNN
        handles are per thread). Seconds."""
        shapes = self.runner.batch_shapes(self.s.batch.max_size)
        all_threads = threading.Barrier(self.runner.streams)  # holds each warm-up until every thread has one

        def warm_up_one_thread() -> float:
            seconds = self.runner.warm_up(shapes)
            all_threads.wait()
            return seconds

        return max(f.result() for f in [self._scorer.submit(warm_up_one_thread) for _ in range(self.runner.streams)])

    def score_ahead(self, batch: Batch) -> None:
        """Score the batch in a scoring thread as soon as one is free, before it is asked for."""
        batch.scoring = self._scorer.submit(self._score_stage, batch)

    def scored(self, batch: Batch) -> Scored | None:
        """The batch's Scored, once scored (now, if it was not scored ahead); None for a dropped batch."""
        return (batch.scoring or self._scorer.submit(self._score_stage, batch)).result()

    def load(self, new: ModelArtifact) -> None:
        """Warm up the new model on a scoring thread and swap it in; call while no batch is in flight."""
        self._scorer.submit(self.runner.load, new).result()

    def shutdown(self) -> None:
        """Stop the threads without waiting: what is queued is cancelled."""
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self._nvjpeg_thread.shutdown(wait=False, cancel_futures=True)
        self._scorer.shutdown(wait=False, cancel_futures=True)
        if self._evidence:
            self._evidence.shutdown(wait=False, cancel_futures=True)

    # ---- 2. decode (threads) ----------------------------------------------------------------------

    def start(self, records: list[ConsumedRecord]) -> Batch:
        """Start decoding a batch in the decode threads (and on CUDA with nvJPEG); returns at once."""
        size, limits = self.runner.size, self.s.limits
        decoding = [self._decoder.submit(decode_record, r, size, limits.max_frame_bytes, limits.max_pixels,
                                         self._nvjpeg is None) for r in records]
        on_device = self._nvjpeg_thread.submit(self._decode_on_device, decoding) if self._nvjpeg else None
        return Batch(records, decoding, on_device)

    def _start_nvjpeg(self) -> DeviceJpegDecoder | None:
        try:
            return DeviceJpegDecoder(self.runner.device)
        except RuntimeError as exc:  # e.g. a torchvision built without nvJPEG: the CPU path still works
            log.warning("nvJPEG unusable, decoding with OpenCV threads instead: %s", str(exc).splitlines()[0])
            return None

    def _decode_on_device(self, decoding: list[Future[Decoded]]) -> DeviceImages | None:
        """(nvjpeg thread) Once validated, the batch's valid frames decoded by nvJPEG on the decoder's stream."""
        assert self._nvjpeg is not None
        valid = [d.record.value or b"" for d in (f.result() for f in decoding) if d.error is None]
        return self._nvjpeg.decode(valid) if valid else None

    def _score(self, batch: Batch, good: list[Decoded]
               ) -> tuple[list[Decoded], list[Decoded], np.ndarray, torch.Tensor | None]:
        """Score the good frames in one batch -> (scored, newly bad, scores (B,), maps (B, S, S) on the device)."""
        if batch.on_device is not None:
            try:
                on_device = batch.on_device.result()
                assert self._nvjpeg is not None and on_device is not None  # `good` has frames: nvJPEG decoded them
                x = self._nvjpeg.to_batch(on_device, self.runner.size)  # the frames of `good`
                return good, [], *self.runner.score_tensor(x)
            except RuntimeError:
                # nvJPEG refused a frame that passed validation: decode each on the CPU, which names the bad one.
                good = [decode_record(d.record, self.runner.size, self.s.limits.max_frame_bytes,
                                      self.s.limits.max_pixels) for d in good]
        bad = [d for d in good if d.error is not None]
        good = [d for d in good if d.error is None]
        if not good:
            return [], bad, np.zeros(0, np.float32), None
        images = [d.image for d in good if d.image is not None]
        assert len(images) == len(good)  # a frame without error decoded on the CPU has its image
        return good, bad, *self.runner.score(np.stack(images))  # (B, S, S, 3) uint8

    def _render_evidence(self, jpeg: bytes, anomaly_map: np.ndarray, pixel_threshold: float, box: Box | None
                         ) -> Evidence:
        """(evidence thread) One alert's evidence, timed as the "evidence" stage."""
        t0 = time.perf_counter()
        evidence = render(jpeg, anomaly_map, pixel_threshold, box)
        self.m.stage_seconds.labels("evidence").observe(time.perf_counter() - t0)
        return evidence

    # ---- 3. score (the scoring thread) --------------------------------------------------------------

    def _score_stage(self, batch: Batch) -> Scored | None:
        """(scoring thread) Wait for the batch's decode, score its good frames in one batch, and draw the defect
        boxes of those over their threshold. None for a batch a rebalance dropped before it was scored."""
        t0 = time.perf_counter()
        decoded = [f.result() for f in batch.decoding]
        t_decoded = time.perf_counter()
        if batch.dropped.is_set():
            return None
        good = [d for d in decoded if d.error is None]
        bad = [d for d in decoded if d.error is not None]
        artifact = self.runner.artifact  # a reload waits until no batch is in flight: this model scores it
        scores: np.ndarray = np.zeros(0, np.float32)
        thresholds: list[float] = []
        alerts: dict[int, Box | None] = {}
        evidence: dict[int, Future[Evidence]] = {}
        if good:
            good, newly_bad, scores, maps = self._score(batch, good)  # (B,), (B, S, S) on the device
            bad.extend(newly_bad)
            if self.s.faults.score_delay_ms:  # fault injection (tests only): a slow device, per frame
                time.sleep(self.s.faults.score_delay_ms * len(good) / 1000)
            for i, d in enumerate(good):
                assert d.meta is not None and maps is not None  # a scored frame had its headers read, and a map
                thresholds.append(self.s.model.threshold_for(d.meta.camera_id, artifact.threshold))
                if is_defect(float(scores[i]), thresholds[i]):
                    anomaly_map = maps[i].cpu().numpy()  # (S, S)
                    alerts[i] = defect_box(anomaly_map, artifact.pixel_threshold, d.frame_hw)
                    if self._evidence:
                        evidence[i] = self._evidence.submit(self._render_evidence, d.record.value or b"",
                                                            anomaly_map, artifact.pixel_threshold, alerts[i])
            self.m.batch_size.observe(len(good))
        scored_ns = time.time_ns()
        self.m.stage_seconds.labels("decode").observe(t_decoded - t0)
        self.m.stage_seconds.labels("score").observe(time.perf_counter() - t_decoded)
        return Scored(decoded, good, bad, scores, thresholds, alerts, artifact, scored_ns, evidence)
