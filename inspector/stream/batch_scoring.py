"""The compute side of the worker's hot loop: decode a batch in threads (on CUDA the decode threads only validate,
and one more thread decodes the whole batch with nvJPEG on a CUDA stream of its own), then score it in a scoring
thread (one on CUDA, `model.cpu_streams` on the CPU), so that scoring never waits for the main thread's publishing
and committing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from inspector.contracts import Box, FrameMeta
from inspector.decode.jpeg import InputSize, decode_jpeg, size_hw
from inspector.decode.preprocess import DeviceJpegDecoder
from inspector.errors import BadFrame
from inspector.evidence import Evidence, render
from inspector.kafka.transport import ConsumedRecord
from inspector.model.artifact import ModelArtifact
from inspector.model.runtime import ModelRunner
from inspector.model.scoring import defect_region, peak_region, region_box
from inspector.model.threshold import is_defect
from inspector.object_extent import object_box
from inspector.settings import Settings
from inspector.stream.frame_decode import (
    DecodedFrame,
    Rejected,
    decode_record,
    decode_records,
    split_among,
    split_decoded,
)
from inspector.stream.metrics import WorkerMetrics

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DeviceImages = tuple[list["torch.Tensor"], "torch.cuda.Event"]  # nvJPEG's images of a batch and their ready event


@dataclass(slots=True)
class ScoredFrame:
    """One frame's verdict, from the scoring thread: what its alert, its score record and its metrics are made of."""

    record: ConsumedRecord
    meta: FrameMeta
    score: float
    threshold: float  # in force for its camera
    alert: bool = False  # over its threshold: the sorter ejects it
    box: Box | None = None  # an alert's defect region, in the frame's pixels
    object_box: Box | None = None  # the object (fruit) that defect lies on, in the frame's pixels
    evidence: Future[Evidence] | None = None  # an alert's rendering, drawn in the evidence thread


@dataclass(slots=True)
class ScoredBatch:
    """A batch after the score stage, all on the host: what publishing it needs."""

    frames: list[ScoredFrame]  # in record order
    rejected: list[Rejected]  # for the dead-letter topic
    artifact: ModelArtifact  # the model that scored them (a hot reload may swap it before they are published)
    scored_ns: int


@dataclass(slots=True)
class OnDevice:
    """nvJPEG's images of a batch's valid frames, with the decoder that turns them into a model batch."""

    decoder: DeviceJpegDecoder
    images: DeviceImages

    def to_batch(self, size: InputSize) -> torch.Tensor:
        return self.decoder.to_batch(self.images, size)  # (B, 3, S, S) float (a tiled model's (B, 3, h, w))


@dataclass
class Batch:
    """A polled batch on its way through decode and score, until the worker publishes it."""

    records: list[ConsumedRecord]
    decoding: list[Future[list[DecodedFrame | Rejected]]] = field(default_factory=list)  # runs, in record order
    on_device: Future[OnDevice | None] | None = None  # on CUDA: nvJPEG's images of the valid frames (None: none)
    scoring: Future[ScoredBatch | None] | None = None  # from the scoring thread
    dropped: threading.Event = field(default_factory=threading.Event)  # a rebalance took it: do not score it

    def is_scored(self) -> bool:
        return self.scoring is not None and self.scoring.done()

    def decoded(self) -> list[DecodedFrame | Rejected]:
        """Each record's outcome, in record order, once every decode thread is through (blocks until then)."""
        return [outcome for run in self.decoding for outcome in run.result()]


class BatchScorer:
    """Decodes and scores batches in threads of its own: `start` a batch, optionally `score_ahead`, then take it
    `scored`. The model also warms up and reloads on a scoring thread."""

    def __init__(self, settings: Settings, runner: ModelRunner, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
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
        handles are per thread, and its CUDA graphs are captured in the one scoring thread that replays them).
        Seconds."""
        shapes = self.runner.batch_shapes(self.settings.batch.max_size)
        all_threads = threading.Barrier(self.runner.streams)  # holds each warm-up until every thread has one

        def warm_up_one_thread() -> float:
            seconds = self.runner.warm_up(shapes)
            all_threads.wait()
            return seconds

        warming = [self._scorer.submit(warm_up_one_thread) for _ in range(self.runner.streams)]
        seconds = max(future.result() for future in warming)
        t0 = time.perf_counter()
        self._warm_alert_path()
        return seconds + time.perf_counter() - t0

    def _warm_alert_path(self) -> None:
        """An alert's own steps once on a blank frame: OpenCV's first call in a process took 120 ms (cpu-2), which
        the line's first alert would otherwise pay on the scoring thread."""
        h, w = size_hw(self.runner.size)
        blank = np.zeros((h, w, 3), np.uint8)
        defect = np.zeros((h, w), bool)
        defect[h // 2, w // 2] = True
        object_box(blank, defect, (h, w))
        ok, jpeg = cv2.imencode(".jpg", blank)
        if ok:
            render(jpeg.tobytes(), np.zeros((h, w), np.float32), 1.0, None)

    def score_ahead(self, batch: Batch) -> None:
        """Score the batch in a scoring thread as soon as one is free, before it is asked for."""
        batch.scoring = self._scorer.submit(self._score_stage, batch)

    def wait_for_any(self, batches: Iterable[Batch]) -> None:
        """Block until one more of the batches scored ahead is scored (at once if none is still scoring)."""
        scoring = [batch.scoring for batch in batches if batch.scoring is not None and not batch.scoring.done()]
        if scoring:
            wait(scoring, return_when=FIRST_COMPLETED)

    def scored(self, batch: Batch) -> ScoredBatch:
        """The batch's verdicts, once scored (now, if it was not scored ahead). Only for a batch still held: one a
        rebalance dropped has none."""
        scored = (batch.scoring or self._scorer.submit(self._score_stage, batch)).result()
        if scored is None:
            raise RuntimeError("a batch that a rebalance dropped was asked for its verdicts")
        return scored

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
        size, limits, nvjpeg = self.runner.size, self.settings.limits, self._nvjpeg
        decoding = [self._decoder.submit(decode_records, run, size, limits.max_frame_bytes, limits.max_pixels,
                                         nvjpeg is None)
                    for run in split_among(records, self.settings.batch.decode_threads)]
        batch = Batch(records, decoding)
        batch.on_device = self._nvjpeg_thread.submit(self._decode_on_device, nvjpeg, batch) if nvjpeg else None
        return batch

    def _start_nvjpeg(self) -> DeviceJpegDecoder | None:
        try:
            return DeviceJpegDecoder(self.runner.device)
        except RuntimeError as exc:  # e.g. a torchvision built without nvJPEG: the CPU path still works
            log.warning("nvJPEG unusable, decoding with OpenCV threads instead: %s", str(exc).splitlines()[0])
            return None

    @staticmethod
    def _decode_on_device(nvjpeg: DeviceJpegDecoder, batch: Batch) -> OnDevice | None:
        """(nvjpeg thread) Once validated, the batch's valid frames decoded by nvJPEG on the decoder's stream."""
        frames, _ = split_decoded(batch.decoded())
        return OnDevice(nvjpeg, nvjpeg.decode([frame.record.value or b"" for frame in frames])) if frames else None

    def _score(self, batch: Batch, frames: list[DecodedFrame]
               ) -> tuple[list[DecodedFrame], list[Rejected], np.ndarray, torch.Tensor | None]:
        """Score the valid frames in one batch -> (scored, newly rejected, scores (B,), maps (B, S, S) on the
        device; None when no frame is left)."""
        if batch.on_device is not None:
            try:
                on_device = batch.on_device.result()
                if on_device is not None:  # it is: `frames` is not empty
                    return frames, [], *self.runner.score_tensor(on_device.to_batch(self.runner.size))
            except RuntimeError:
                # nvJPEG refused a frame that passed validation: decode each on the CPU, which names the bad one.
                limits = self.settings.limits
                frames, rejected = split_decoded([decode_record(frame.record, self.runner.size, limits.max_frame_bytes,
                                                                limits.max_pixels) for frame in frames])
                if not frames:
                    return [], rejected, np.zeros(0, np.float32), None
                return frames, rejected, *self._score_on_host(frames)
        return frames, [], *self._score_on_host(frames)

    def _score_on_host(self, frames: list[DecodedFrame]) -> tuple[np.ndarray, torch.Tensor]:
        """Score frames decoded on the CPU -> (scores (B,), maps (B, S, S) on the device)."""
        images = np.stack([frame.image for frame in frames if frame.image is not None])  # (B, S, S, 3) uint8
        return self.runner.score(images)

    def _render_evidence(self, jpeg: bytes, anomaly_map: np.ndarray, pixel_threshold: float, box: Box | None
                         ) -> Evidence:
        """(evidence thread) One alert's evidence, timed as the "evidence" stage."""
        t0 = time.perf_counter()
        evidence = render(jpeg, anomaly_map, pixel_threshold, box)
        self.metrics.stage_seconds.labels("evidence").observe(time.perf_counter() - t0)
        return evidence

    # ---- 3. score (the scoring thread) --------------------------------------------------------------

    def _score_stage(self, batch: Batch) -> ScoredBatch | None:
        """(scoring thread) Wait for the batch's decode, score its valid frames in one batch, and give each its
        verdict. None for a batch a rebalance dropped before it was scored."""
        t0 = time.perf_counter()
        decoded = batch.decoded()
        t_decoded = time.perf_counter()
        if batch.dropped.is_set():
            return None
        frames, rejected = split_decoded(decoded)
        artifact = self.runner.artifact  # a reload waits until no batch is in flight: this model scores it
        verdicts: list[ScoredFrame] = []
        if frames:
            frames, newly_rejected, scores, maps = self._score(batch, frames)  # (B,), (B, S, S) on the device
            rejected.extend(newly_rejected)
            if self.settings.faults.score_delay_ms:  # fault injection (tests only): a slow device, per frame
                time.sleep(self.settings.faults.score_delay_ms * len(frames) / 1000)
            if maps is not None:
                verdicts = self._verdicts(frames, scores, maps, artifact)
            self.metrics.batch_size.observe(len(frames))
        scored_ns = time.time_ns()
        self.metrics.stage_seconds.labels("decode").observe(t_decoded - t0)
        self.metrics.stage_seconds.labels("score").observe(time.perf_counter() - t_decoded)
        return ScoredBatch(verdicts, rejected, artifact, scored_ns)

    def _verdicts(self, frames: list[DecodedFrame], scores: np.ndarray, maps: torch.Tensor, artifact: ModelArtifact
                  ) -> list[ScoredFrame]:
        """Each frame against its camera's threshold; an alert also gets its defect box and, in the evidence
        thread, its rendering (only an alert's map is copied to the host)."""
        verdicts: list[ScoredFrame] = []
        model_settings, pixel_threshold = self.settings.model, artifact.pixel_threshold
        for index, (frame, score) in enumerate(zip(frames, scores.tolist(), strict=True)):
            camera = frame.meta.camera_id
            threshold = model_settings.threshold_for(camera, artifact.threshold_for(camera))
            if not is_defect(score, threshold):
                verdicts.append(ScoredFrame(frame.record, frame.meta, score, threshold))
                continue
            anomaly_map = maps[index].cpu().numpy()  # (S, S), a tiled model's (h, w)
            defect = defect_region(anomaly_map, pixel_threshold)
            box = None if defect is None else region_box(defect, frame.frame_hw)
            # Without a region over the pixel threshold the map's peak still says which object alerted.
            object_box = self._object_box(frame, peak_region(anomaly_map) if defect is None else defect)
            evidence = self._evidence.submit(self._render_evidence, frame.record.value or b"", anomaly_map,
                                             pixel_threshold, box) if self._evidence else None
            verdicts.append(ScoredFrame(frame.record, frame.meta, score, threshold, True, box, object_box, evidence))
        return verdicts

    def _object_box(self, frame: DecodedFrame, defect: np.ndarray) -> Box | None:
        """The box of the object an alert's defect lies on, found in the frame at the map's size (decoded again
        on the CPU when the batch was decoded on the GPU: only alerts pay for it)."""
        image = frame.image
        if image is None or image.shape[:2] != defect.shape:
            limits = self.settings.limits
            try:
                image, _ = decode_jpeg(frame.record.value or b"", size=(defect.shape[0], defect.shape[1]),
                                       max_bytes=limits.max_frame_bytes, max_pixels=limits.max_pixels)
            except BadFrame:  # nvJPEG read what OpenCV refuses: the sorter aims at the defect instead
                return None
        return object_box(image, defect, frame.frame_hw)
