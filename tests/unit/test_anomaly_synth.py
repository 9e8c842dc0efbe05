"""Synthetic anomalies: mask coverage, the blend's bounds, determinism, selection share, sizes and devices."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from inspector.training.anomaly_synth import (
    AnomalySynthConfig,
    anomaly_masks,
    blend,
    perlin_noise,
    synthesize_anomalies,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # these tensors are small: on 2 cores busy with training, a second OpenMP thread waits for a time slice per op
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] with exact 0s and 1s in them, (B, 3, H, W)."""
    x = torch.rand(b, 3, max(1, h // 8), max(1, w // 8), generator=_gen(seed))
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return (1.4 * x - 0.2).clamp(0, 1)


def _coverage(masks: torch.Tensor) -> torch.Tensor:
    return masks.flatten(1).mean(1)


def test_perlin_noise_any_size_about_unit_range() -> None:
    for shape, res in [((64, 64), (4, 4)), ((50, 70), (3, 5)), ((37, 101), (16, 2))]:
        noise = perlin_noise(shape, res, _gen())
        assert noise.shape == shape
        assert noise.abs().max() <= 1.05
        assert noise.std() > 0.1
        assert torch.equal(noise, perlin_noise(shape, res, _gen()))


def test_masks_are_binary_non_empty_and_within_coverage() -> None:
    config = AnomalySynthConfig()
    masks = anomaly_masks(48, 64, 96, config, _gen())
    assert masks.shape == (48, 1, 64, 96)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    cover = _coverage(masks)
    assert (cover >= config.min_coverage).all() and (cover > 0).all()
    assert (cover <= config.max_coverage).all()


def test_masks_that_keep_failing_are_replaced_within_bounds() -> None:
    # coverage bounds that Perlin masks and blobs rarely meet force the redraws and the rectangle fallback
    config = AnomalySynthConfig(min_coverage=0.3, max_coverage=0.4, max_attempts=2)
    cover = _coverage(anomaly_masks(16, 40, 60, config, _gen()))
    assert (cover >= 0.3).all() and (cover <= 0.4).all()


def test_selected_images_get_a_mask_and_the_others_are_untouched() -> None:
    config = AnomalySynthConfig(probability=0.5)
    clean = _batch(16, 48, 48)
    out, masks = synthesize_anomalies(clean, config, _gen(1))
    assert out.shape == clean.shape and masks.shape == (16, 1, 48, 48)
    cover = _coverage(masks)
    chosen = cover > 0
    assert 0 < int(chosen.sum()) < 16
    assert (cover[chosen] >= config.min_coverage).all() and (cover[chosen] <= config.max_coverage).all()
    assert torch.equal(out[~chosen], clean[~chosen])
    _, every_mask = synthesize_anomalies(clean, AnomalySynthConfig(probability=1.0), _gen(1))
    assert (_coverage(every_mask) > 0).all()


def test_outputs_in_range_unchanged_outside_mask_and_change_bounded_inside() -> None:
    clean = _batch(12, 48, 48)
    for sources in [("patch",), ("flat",), ("noise",), ("patch", "flat", "noise")]:
        config = AnomalySynthConfig(probability=1.0, max_opacity=0.6, sources=sources)
        out, masks = synthesize_anomalies(clean, config, _gen(2))
        assert out.min() >= 0 and out.max() <= 1
        outside = masks.expand_as(clean) == 0
        assert torch.equal(out[outside], clean[outside])
        # the fill lies in [0, 1], so |fill - x| <= max(x, 1 - x)
        change = (out - clean).abs()
        assert (change <= 0.6 * torch.maximum(clean, 1 - clean) + 1e-6).all()
        assert (change.flatten(1).amax(1) > 0).all(), sources


def test_blend_formula_and_opacity_one_gives_the_fill() -> None:
    x, fill = torch.rand(4, 3, 16, 16, generator=_gen(3)), torch.rand(4, 3, 16, 16, generator=_gen(4))
    m = (torch.rand(4, 1, 16, 16, generator=_gen(5)) < 0.3).float()
    beta = torch.tensor([0.15, 0.5, 0.8, 1.0])
    out = blend(x, fill, m, beta)
    expected = (1 - beta.view(4, 1, 1, 1) * m) * x + beta.view(4, 1, 1, 1) * m * fill
    assert (out - expected).abs().max() < 1e-6
    assert ((out - x).abs() <= beta.view(4, 1, 1, 1) * (fill - x).abs() + 1e-6).all()
    inside = m.expand_as(x).bool()
    assert torch.equal(out[3][inside[3]], fill[3][inside[3]])
    assert torch.equal(out[~inside], x[~inside])


def test_flat_fill_at_known_opacity_recovers_one_colour_per_image() -> None:
    clean = _batch(8, 32, 48)
    for opacity in (0.5, 1.0):
        config = AnomalySynthConfig(probability=1.0, min_opacity=opacity, max_opacity=opacity, sources=("flat",))
        out, masks = synthesize_anomalies(clean, config, _gen(6))
        for img, x, m in zip(out, clean, masks):
            inside = m[0] > 0
            fill = (img[:, inside] - (1 - opacity) * x[:, inside]) / opacity  # (3, pixels in the mask)
            assert (fill.amax(1) - fill.amin(1)).max() < 1e-5


def test_same_seed_same_output_other_seed_other_output() -> None:
    clean = _batch(8, 40, 56)
    config = AnomalySynthConfig(probability=0.8)
    a_out, a_mask = synthesize_anomalies(clean, config, _gen(7))
    b_out, b_mask = synthesize_anomalies(clean, config, _gen(7))
    c_out, c_mask = synthesize_anomalies(clean, config, _gen(8))
    assert torch.equal(a_out, b_out) and torch.equal(a_mask, b_mask)
    assert not torch.equal(a_mask, c_mask) and not torch.equal(a_out, c_out)


def test_probability_zero_returns_the_input_unchanged() -> None:
    clean = _batch(6, 32, 32)
    out, masks = synthesize_anomalies(clean, AnomalySynthConfig(probability=0.0), _gen())
    assert torch.equal(out, clean) and out is not clean
    assert not masks.any()


@pytest.mark.parametrize(("h", "w"), [(128, 128), (208, 512), (37, 53)])
def test_any_size(h: int, w: int) -> None:
    config = AnomalySynthConfig(probability=1.0)
    out, masks = synthesize_anomalies(_batch(3, h, w), config, _gen(9))
    assert out.shape == (3, 3, h, w) and masks.shape == (3, 1, h, w)
    cover = _coverage(masks)
    assert (cover > 0).all() and (cover >= config.min_coverage).all() and (cover <= config.max_coverage).all()


def test_selected_share_is_close_to_probability() -> None:
    config = AnomalySynthConfig(probability=0.3)
    g, chosen = _gen(10), 0
    clean = _batch(16, 16, 16)
    for _ in range(40):
        _, masks = synthesize_anomalies(clean, config, g)
        chosen += int((_coverage(masks) > 0).sum())
    assert abs(chosen / (40 * 16) - 0.3) < 0.06  # 640 draws: 3 standard deviations is 0.054


def test_bad_config_is_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="probability"):
        AnomalySynthConfig(probability=1.5)
    with pytest.raises(ValueError, match="opacity"):
        AnomalySynthConfig(min_opacity=0.8, max_opacity=0.5)
    with pytest.raises(ValueError, match="sources"):
        AnomalySynthConfig(sources=("texture",))


@pytest.mark.gpu
def test_runs_on_the_device_of_the_batch() -> None:
    clean = _batch(8, 64, 64).cuda()
    config = AnomalySynthConfig(probability=1.0)
    out, masks = synthesize_anomalies(clean, config, _gen(11))
    again, _ = synthesize_anomalies(clean, config, _gen(11))
    assert out.is_cuda and masks.is_cuda
    assert torch.equal(out, again)
    assert torch.equal(out[masks.expand_as(out) == 0], clean[masks.expand_as(out) == 0])
