import pytest
import torch
import torch.nn.functional as F

from inspector.model import image_similarity
from inspector.model.image_similarity import (
    ERROR_MAPS,
    SSIM_C1,
    SSIM_C2,
    SSIM_SIGMA,
    abs_error_map,
    combined_error_map,
    lab_difference_map,
    msgms_map,
    rgb_to_lab,
    squared_error_map,
    ssim_map,
)

MAP_NAMES = sorted(ERROR_MAPS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These images are tiny: on a busy CPU, intra-op threads only wait on each other (~50x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _texture(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1]: smooth colour blobs plus mild noise, like a fruit surface."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, max(1, h // 8), max(1, w // 8), generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.2 + 0.6 * smooth + 0.03 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


def _colour_patch(
    h: int, w: int, background: tuple[float, ...], patch: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat (1, 3, H, W) image and a copy with a centred quarter-area patch of another colour."""
    x = torch.tensor(background).view(1, 3, 1, 1).expand(1, 3, h, w).clone()
    y = x.clone()
    y[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = torch.tensor(patch).view(1, 3, 1, 1)
    return x, y


@pytest.mark.parametrize("name", MAP_NAMES)
def test_identical_images_give_zero_everywhere(name):
    x = _texture(2, 32, 48)
    m = ERROR_MAPS[name](x, x.clone())
    assert m.shape == (2, 32, 48) and m.dtype == torch.float32
    assert float(m.abs().max()) < 1e-5


@pytest.mark.parametrize("name", MAP_NAMES)
def test_a_dark_blob_raises_the_map_at_the_blob_not_far_from_it(name):
    x = _texture(1, 64, 96)
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(96), indexing="ij")
    blob = (rows - 20) ** 2 + (cols - 20) ** 2 <= 16  # a disc of radius 4 centred at (20, 20)
    y = x.clone()
    y[:, :, blob] = 0.05
    m = ERROR_MAPS[name](x, y)[0]  # (H, W)
    near = m[14:27, 14:27]  # the blob and a 2-pixel rim: msgms peaks on the blob's edge
    far = m[:, 64:]  # >= 40 pixels away, beyond the coarsest msgms scale's reach
    assert float(near.max()) > 0.05
    assert float(far.max()) < 0.05 * float(near.max())


def test_msgms_sees_an_edge_that_leaves_the_mean_colour_unchanged():
    x = torch.full((1, 3, 64, 64), 0.5)
    y = x.clone()
    y[:, :, 16:48, 31] += 0.1  # a bright and a dark column side by side: a ridge, mean colour unchanged
    y[:, :, 16:48, 32] -= 0.1
    assert float((y.mean() - x.mean()).abs()) < 1e-6
    edge = msgms_map(x, y)
    assert float(squared_error_map(x, y).max()) < 0.011  # l2 sees only 0.1^2 on the two columns
    assert float(edge.max()) > 0.3
    # A brightness shift of a region keeps the structure inside it, so msgms stays ~0 there.
    z = x.clone()
    z[:, :, 8:56, 8:56] += 0.1
    assert float(msgms_map(x, z)[0, 28:36, 28:36].max()) < 1e-4
    # Nor do the image's borders gain an edge when the whole image brightens (no zero padding).
    assert float(msgms_map(x, x + 0.1).max()) < 1e-4


def test_lab_weighs_an_equal_luminance_hue_change_more_than_l2_does():
    # Two patches on grey with the same l2 error: one changes only lightness, one only hue (equal CIE L*).
    grey = (0.5, 0.5, 0.5)
    hue = (0.6, 0.5 - 0.035119, 0.5)  # redder at the same L* (found by bisection on L*)
    u = ((0.1**2 + 0.035119**2) / 3) ** 0.5
    lighter = (0.5 + u,) * 3  # the same squared error as `hue`
    x, y_hue = _colour_patch(32, 32, grey, hue)
    _, y_light = _colour_patch(32, 32, grey, lighter)
    lab_grey, lab_hue = rgb_to_lab(x)[0, :, 16, 16], rgb_to_lab(y_hue)[0, :, 16, 16]
    assert abs(float(lab_grey[0] - lab_hue[0])) < 0.01  # the premise: equal lightness
    l2_ratio = float(squared_error_map(x, y_hue)[0, 16, 16] / squared_error_map(x, y_light)[0, 16, 16])
    lab_ratio = float(lab_difference_map(x, y_hue)[0, 16, 16] / lab_difference_map(x, y_light)[0, 16, 16])
    assert l2_ratio == pytest.approx(1.0, abs=1e-3)  # l2 cannot tell the two changes apart
    assert lab_ratio > 2.0  # Delta E 14.9 for the hue change vs 6.1 for the lightness change


@pytest.mark.parametrize(
    ("rgb", "lab"),
    [
        ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),  # white
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),  # black
        ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),  # sRGB red, as in Lindbloom's calculator
    ],
)
def test_rgb_to_lab_reference_colours(rgb, lab):
    got = rgb_to_lab(torch.tensor(rgb).view(1, 3, 1, 1)).flatten()
    assert torch.allclose(got, torch.tensor(lab), atol=0.5), got


def test_rgb_to_lab_keeps_a_finite_gradient_at_black_and_white():
    x = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 3, 1, 1).clone().requires_grad_(True)
    rgb_to_lab(x)[:, 0].sum().backward()  # L*
    assert torch.isfinite(x.grad).all() and bool((x.grad > 0).all())  # brighter is lighter, even at the ends


@pytest.mark.parametrize("name", MAP_NAMES)
def test_random_and_saturated_inputs_give_finite_nonnegative_maps(name):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 24, 24, generator=g), torch.rand(3, 3, 24, 24, generator=g)
    x[0], y[0] = 0.0, 1.0  # black vs white: the extremes of every formula
    m = ERROR_MAPS[name](x, y)
    assert torch.isfinite(m).all() and float(m.min()) >= 0
    if name != "msgms":  # msgms compares structure only, and two flat images have the same (none)
        assert float(m[0].min()) > 0  # black vs white differs everywhere


@pytest.mark.parametrize("name", MAP_NAMES)
@pytest.mark.parametrize("identical", [False, True], ids=["random", "identical"])
def test_gradients_flow_and_stay_finite(name, identical):
    g = torch.Generator().manual_seed(2)
    target = torch.rand(2, 3, 20, 20, generator=g)
    target[:, :, :4] = 0.0  # black, where sRGB and CIELAB switch to their linear pieces
    # Identical images put sqrt and the cube root at their flat points, where a naive gradient is NaN.
    recon = (target.clone() if identical else torch.rand(2, 3, 20, 20, generator=g)).requires_grad_(True)
    ERROR_MAPS[name](recon, target).mean().backward()
    assert recon.grad is not None and torch.isfinite(recon.grad).all()
    if not identical:
        assert float(recon.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", MAP_NAMES)
def test_a_reconstruction_outside_0_1_still_gives_finite_maps_and_gradients(name):
    # A decoder without a final sigmoid overshoots; the maps must not turn NaN on it.
    g = torch.Generator().manual_seed(3)
    target = torch.rand(1, 3, 16, 16, generator=g)
    recon = (1.6 * torch.rand(1, 3, 16, 16, generator=g) - 0.3).requires_grad_(True)  # in [-0.3, 1.3]
    m = ERROR_MAPS[name](recon, target)
    m.mean().backward()
    assert torch.isfinite(m).all() and float(m.detach().min()) >= 0 and torch.isfinite(recon.grad).all()


def test_kernels_cached_under_inference_mode_still_serve_autograd():
    x = torch.rand(1, 3, 16, 16)
    for cached in (image_similarity._gaussian_taps, image_similarity._rgb_to_normalised_xyz):
        cached.cache_clear()  # so that this test, not an earlier one, fills the caches
    with torch.inference_mode():
        for fn in ERROR_MAPS.values():
            fn(x, x)  # the worker scores first, under inference mode, filling the kernel caches
    recon = torch.rand(1, 3, 16, 16, requires_grad=True)
    (ssim_map(recon, x) + msgms_map(recon, x) + lab_difference_map(recon, x)).mean().backward()
    assert recon.grad is not None


@pytest.mark.parametrize("name", MAP_NAMES)
@pytest.mark.parametrize("hw", [(40, 104), (33, 17), (3, 5), (1, 1)])
def test_any_image_size(name, hw):
    x = _texture(2, *hw)
    y = (x + 0.1).clamp(0, 1)
    m = ERROR_MAPS[name](x, y)
    assert m.shape == (2, *hw) and torch.isfinite(m).all()


@pytest.mark.parametrize("name", MAP_NAMES)
def test_bf16_autocast_does_not_change_the_map(name):
    x, y = _texture(1, 24, 24, seed=3), _texture(1, 24, 24, seed=4)
    plain = ERROR_MAPS[name](x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = ERROR_MAPS[name](x.bfloat16(), y.bfloat16())
    assert autocast.dtype == torch.float32
    # Only the inputs' bf16 rounding differs, not the arithmetic (bf16 conv would be off by ~1e-2).
    expected = ERROR_MAPS[name](x.bfloat16().float(), y.bfloat16().float())
    assert torch.allclose(autocast, expected, atol=1e-6)
    assert torch.allclose(autocast, plain, atol=0.05)


def test_ssim_map_matches_a_direct_2d_gaussian_ssim():
    x, y = _texture(2, 20, 28, seed=5), _texture(2, 20, 28, seed=6)
    x64, y64 = x.double(), y.double()  # float64: the textbook E[x^2] - E[x]^2 loses ~2e-4 to rounding in float32
    taps = torch.exp(-((torch.arange(7, dtype=torch.float64) - 3.0) ** 2) / (2 * SSIM_SIGMA**2))
    k2 = (taps[:, None] * taps[None, :]) / taps.sum() ** 2  # (7, 7)

    def blur(t):  # one full 2-D conv per channel
        return F.conv2d(F.pad(t, (3, 3, 3, 3), mode="reflect"), k2.expand(3, 1, 7, 7), groups=3)

    mx, my = blur(x64), blur(y64)
    vx, vy, cov = blur(x64 * x64) - mx**2, blur(y64 * y64) - my**2, blur(x64 * y64) - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mx**2 + my**2 + SSIM_C1) * (vx + vy + SSIM_C2))
    assert torch.allclose(ssim_map(x, y).double(), (1 - s).mean(dim=1), atol=3e-5)


def test_uniform_window_ssim_is_the_training_loss_of_the_image_autoencoders():
    """The uniform window (the pixels inside the image only) reproduces the loss the autoencoders were trained with,
    in float32 to rounding: 1 - mean SSIM, and its gradient."""
    x, y = _texture(2, 20, 28, seed=7), _texture(2, 20, 28, seed=8)

    def mean(t):  # the 7x7 mean over the pixels inside the image
        return F.avg_pool2d(t, 7, 1, 3, count_include_pad=False)

    def trained_loss(a, b):
        ma, mb = mean(a), mean(b)
        va, vb, cov = mean(a * a) - ma**2, mean(b * b) - mb**2, mean(a * b) - ma * mb
        s = ((2 * ma * mb + SSIM_C1) * (2 * cov + SSIM_C2)) / ((ma**2 + mb**2 + SSIM_C1) * (va + vb + SSIM_C2))
        return 1 - s.mean()

    x_old, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    old, new = trained_loss(x_old, y), ssim_map(x_new, y, kernel="uniform").mean()
    old.backward()
    new.backward()
    assert new.item() == pytest.approx(old.item(), abs=1e-6)
    assert torch.allclose(x_new.grad, x_old.grad, atol=1e-6)  # gradients of about 1e-2: float32 rounding
    assert not torch.allclose(ssim_map(x, y, kernel="uniform"), ssim_map(x, y), atol=1e-3)  # two windows
    with pytest.raises(ValueError, match="kernel"):
        ssim_map(x, y, kernel="box")  # type: ignore[arg-type]


def test_msgms_map_matches_riads_conv2d_formulation():
    x, y = _texture(2, 24, 40, seed=11), _texture(2, 24, 40, seed=12)  # sizes divisible by 8: no ceil_mode edge
    gx = torch.tensor([[1.0, 0.0, -1.0]] * 3) / 3
    prewitt = torch.stack([gx, gx.T]).unsqueeze(1)  # (2, 1, 3, 3)
    a, b, total = x.mean(1, keepdim=True), y.mean(1, keepdim=True), 0
    for scale in range(4):
        if scale:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        ga, gb = (F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), prewitt).norm(dim=1, keepdim=True) for t in (a, b))
        gms = (2 * ga * gb + 0.0026) / (ga**2 + gb**2 + 0.0026)
        total = total + F.interpolate(1 - gms, size=(24, 40), mode="bilinear", align_corners=False)
    assert torch.allclose(msgms_map(x, y), (total / 4).squeeze(1), atol=1e-5)


def test_pixel_error_maps_are_channel_means():
    x, y = _texture(2, 8, 8, seed=7), _texture(2, 8, 8, seed=8)
    assert torch.allclose(squared_error_map(x, y), ((x - y) ** 2).mean(dim=1))
    assert torch.allclose(abs_error_map(x, y), (x - y).abs().mean(dim=1))


def test_combined_error_map_is_the_weighted_sum():
    x, y = _texture(2, 16, 16, seed=9), _texture(2, 16, 16, seed=10)
    got = combined_error_map(x, y, ("l2", "ssim", "lab"), (1.0, 0.5, 2.0))
    assert torch.allclose(got, squared_error_map(x, y) + 0.5 * ssim_map(x, y) + 2.0 * lab_difference_map(x, y))
    assert torch.allclose(combined_error_map(x, y, ("l1", "msgms")), abs_error_map(x, y) + msgms_map(x, y))


def test_combined_error_map_rejects_bad_names_and_weights():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown error map"):
        combined_error_map(x, x, ("l2", "psnr"))
    with pytest.raises(ValueError, match="one weight per map"):
        combined_error_map(x, x, ("l2", "ssim"), (1.0,))
    with pytest.raises(ValueError, match="at least one"):
        combined_error_map(x, x, ())
    with pytest.raises(ValueError, match="same shape"):
        ssim_map(x, torch.rand(1, 3, 8, 9))
