"""The runner's CUDA graph path on the CPU, through a stand-in backend that records captures and replays eagerly on
the same static buffers: one capture per padded size at warm-up, results equal to eager scoring, outputs that are
the caller's own, the fallback to eager on a failed capture, and a fresh capture on reload."""

import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch

from inspector.model.artifact import ModelArtifact
from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.cuda_graphs import GraphBackend, Scored
from inspector.model.null import NullModel
from inspector.model.runtime import ModelRunner

CPU = torch.device("cpu")
SIZE = 32


class EagerGraph:
    """Replays by running the captured function again and writing its results into the static outputs."""

    def __init__(self, fn: Callable[[], Scored], outputs: Scored, replays: list[int]) -> None:
        self.fn, self.outputs, self.replays = fn, outputs, replays

    def replay(self) -> None:
        self.replays.append(len(self.outputs[0]))
        with torch.inference_mode():
            for static, new in zip(self.outputs, self.fn(), strict=True):
                static.copy_(new)


class StandInBackend:
    """The shape of `CudaGraphBackend`, on the CPU: records each capture's batch size and each replay's."""

    def __init__(self) -> None:
        self.captures: list[int] = []
        self.replays: list[int] = []

    def capture(self, fn: Callable[[], Scored]) -> tuple[EagerGraph, Scored]:
        outputs = fn()
        self.captures.append(len(outputs[0]))
        return EagerGraph(fn, outputs, self.replays), outputs


class FailingBackend:
    def capture(self, fn: Callable[[], Scored]) -> tuple[EagerGraph, Scored]:  # noqa: ARG002 - fails first
        raise RuntimeError("operation not permitted when stream is capturing")


def _artifact(seed: int) -> ModelArtifact:
    torch.manual_seed(seed)
    return ModelArtifact(Autoencoder(AutoencoderConfig(image_size=SIZE, widths=(8, 16), latent_channels=4)))


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _graphed(artifact: ModelArtifact, backend: GraphBackend, max_batch: int = 16) -> ModelRunner:
    runner = ModelRunner(artifact, CPU, graph_backend=backend)
    runner.warm_up(runner.batch_shapes(max_batch))
    return runner


def test_warm_up_captures_each_padded_size_once_and_scoring_captures_none():
    backend = StandInBackend()
    runner = _graphed(_artifact(0), backend)
    assert backend.captures == [16, 8, 4, 2, 1]  # largest first: the smaller graphs reuse its memory
    assert runner.graphed_batch_sizes == (1, 2, 4, 8, 16)
    backend.replays.clear()
    for n in (1, 3, 16, 5):
        runner.score(_images(n))
    assert backend.captures == [16, 8, 4, 2, 1]
    assert backend.replays == [1, 4, 16, 8]


@pytest.mark.parametrize("n", [1, 3, 16])
def test_replay_scores_the_batch_as_eager_scoring_does(n):
    artifact = _artifact(0)
    graphed = _graphed(artifact, StandInBackend())
    graphed.score(_images(16, seed=1))  # the static input holds another batch's frames before this one
    scores, maps = graphed.score(_images(n))
    eager_scores, eager_maps = ModelRunner(artifact, CPU).score(_images(n))
    assert scores.shape == (n,) and maps.shape == (n, SIZE, SIZE)  # padding sliced off
    assert np.allclose(scores, eager_scores, rtol=1e-5, atol=1e-7)
    assert torch.allclose(maps, eager_maps, rtol=1e-5, atol=1e-7)


def test_replay_also_takes_a_batch_already_on_the_device():
    artifact = _artifact(0)
    x = torch.from_numpy(_images(3)).permute(0, 3, 1, 2).float() / 255  # (3, 3, S, S)
    scores, _ = _graphed(artifact, StandInBackend()).score_tensor(x)
    assert np.allclose(scores, ModelRunner(artifact, CPU).score_tensor(x)[0], rtol=1e-5, atol=1e-7)


def test_returned_outputs_are_not_overwritten_by_the_next_replay():
    runner = _graphed(_artifact(0), StandInBackend())
    first_scores, first_maps = runner.score(_images(4, seed=1))
    kept_scores, kept_maps = first_scores.copy(), first_maps.clone()
    second_scores, second_maps = runner.score(_images(4, seed=2))
    assert not torch.equal(second_maps, kept_maps)  # the static buffers did change ...
    assert np.array_equal(first_scores, kept_scores)  # ... and the first batch's results did not
    assert torch.equal(first_maps, kept_maps)


def test_a_batch_larger_than_every_graph_is_scored_eagerly():
    artifact = _artifact(0)
    backend = StandInBackend()
    runner = _graphed(artifact, backend, max_batch=4)
    backend.replays.clear()
    scores, maps = runner.score(_images(6))
    assert backend.replays == [] and backend.captures == [4, 2, 1]
    assert maps.shape == (6, SIZE, SIZE)
    assert np.allclose(scores, ModelRunner(artifact, CPU).score(_images(6))[0], rtol=1e-5, atol=1e-7)


def test_a_failed_capture_falls_back_to_eager_with_one_warning(caplog):
    artifact = _artifact(0)
    with caplog.at_level(logging.WARNING):
        runner = _graphed(artifact, FailingBackend())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "operation not permitted" in warnings[0].getMessage()
    assert runner.graphed_batch_sizes == ()
    scores, _ = runner.score(_images(3))
    assert np.allclose(scores, ModelRunner(artifact, CPU).score(_images(3))[0], rtol=1e-5, atol=1e-7)


def test_a_reload_captures_for_the_new_model_before_it_serves():
    backend = StandInBackend()
    runner = _graphed(_artifact(0), backend, max_batch=4)
    new = _artifact(1)
    runner.load(new)
    assert backend.captures == [4, 2, 1, 4, 2, 1]
    scores, _ = runner.score(_images(3))
    assert np.allclose(scores, ModelRunner(new, CPU).score(_images(3))[0], rtol=1e-5, atol=1e-7)
    assert not np.allclose(scores, ModelRunner(_artifact(0), CPU).score(_images(3))[0], rtol=1e-3)


def test_the_null_model_is_not_captured():
    artifact = _artifact(0)
    backend = StandInBackend()
    runner = _graphed(ModelArtifact(NullModel(artifact.config)), backend, max_batch=4)
    assert backend.captures == [] and runner.graphed_batch_sizes == ()
    assert runner.score(_images(3))[0].tolist() == [0.0, 0.0, 0.0]
