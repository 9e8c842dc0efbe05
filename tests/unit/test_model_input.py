"""The one resize into the model's square (training, calibration, evaluation and the CPU worker share it)."""

import cv2
import numpy as np
import pytest

from inspector.decode.jpeg import to_input_size


def _stripes(height: int, width: int) -> np.ndarray:
    """One-pixel black and white columns: what a resize that skips pixels turns into a pattern of its own."""
    row = np.where(np.arange(width) % 2 == 0, 255, 0).astype(np.uint8)
    return np.repeat(np.repeat(row[None, :, None], height, axis=0), 3, axis=2)


@pytest.mark.parametrize("shape, expected", [
    ((256, 256), cv2.INTER_LINEAR),  # the producer's frames into the default 224-px model: under 1.25x
    ((240, 280), cv2.INTER_LINEAR),
    ((434, 440), cv2.INTER_AREA),  # an orange photo into 224
    ((240, 640), cv2.INTER_AREA),  # one side under 1.25x is not enough
    ((200, 600), cv2.INTER_LINEAR),  # one side grows
    ((128, 128), cv2.INTER_LINEAR),
])
def test_area_averaging_where_both_sides_shrink_by_more_than_a_quarter_on_one(shape: tuple[int, int],
                                                                           expected: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(to_input_size(image, 224), cv2.resize(image, (224, 224), interpolation=expected))


def test_fine_texture_shrunk_by_2x_or_more_averages_to_grey() -> None:
    out = to_input_size(_stripes(896, 896), 224)
    assert abs(float(out.mean()) - 127.5) < 2 and float(out.std()) < 2


def test_an_image_already_square_at_the_size_is_returned_as_it_is() -> None:
    image = np.zeros((224, 224, 3), np.uint8)
    assert to_input_size(image, 224) is image
