"""The object an alert's defect lies on, found against the belt: on rendered belt frames through the camera's JPEG,
its box's middle is the banana's, whatever the defect (a rot that looks like the belt, speckles, a cut); where no
belt surrounds it, it is the defect or nothing."""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from inspector.decode.jpeg import decode_jpeg
from inspector.model.scoring import peak_region
from inspector.object_extent import object_box, object_region
from inspector.sorter.line_file import parse_line
from inspector.synthetic.bananas import DEFECT_KINDS
from inspector.synthetic.belt import BeltStream, encode_jpeg


def _belt_frames(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]:
    """n defective belt frames as the worker sees them -> (RGB image, defect mask, banana mask, kind)."""
    line = parse_line({"defaults": {"belt_speed_m_s": 0.256, "metres_per_pixel": 0.001, "ejector_distance_m": 0.15},
                       "lanes": [{"id": "lane-1", "actuator": {"protocol": "log"}, "cameras": [{"id": "cam-1"}]}]})
    camera = line.camera("cam-1")
    assert camera is not None
    frames = []
    for frame in itertools.islice(BeltStream(camera, fps=15, defect_rate=1.0, seed=seed).frames(), n):
        scene = frame.render()
        image, _ = decode_jpeg(encode_jpeg(scene.image, 90), size=256, max_bytes=1 << 22, max_pixels=1 << 20)
        frames.append((image, scene.mask > 0, scene.fruit > 0, frame.object.label))
    return frames


def _middle_x(mask: np.ndarray) -> float:
    cols = np.flatnonzero(mask.any(axis=0))
    return (cols[0] + cols[-1] + 1) / 2


def test_the_object_box_is_centred_on_the_banana_whatever_the_defect() -> None:
    kinds, errors = set(), []
    for image, defect, fruit, kind in _belt_frames(48, seed=2):
        # The worker's defect region comes from a smoothed map: it spills a few pixels past the fruit's edge.
        spilled = cv2.dilate(defect.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        box = object_box(image, spilled, (512, 512))  # a frame twice the map's size: the box scales with it
        assert box is not None
        assert 0.02 < box.area_fraction < 0.3
        errors.append(abs((box.x0 + box.x1) / 4 - _middle_x(fruit)))  # in the map's pixels
        assert errors[-1] <= 3.5, kind  # a defect's box is up to half a banana (60 px) away
        kinds.add(kind)
    assert kinds == set(DEFECT_KINDS)
    assert np.median(errors) <= 1.0


def test_the_maps_peak_alone_finds_the_same_object() -> None:
    # An alert whose score crossed the threshold with no pixel over the pixel threshold seeds with its map's peak.
    for image, defect, fruit, _ in _belt_frames(12, seed=2):
        amap = cv2.GaussianBlur(defect.astype(np.float32), (0, 0), 3)  # (H, W), highest inside the defect
        from_peak = object_box(image, peak_region(amap), (256, 256))
        from_region = object_box(image, defect, (256, 256))
        assert from_peak is not None and from_region is not None
        assert abs((from_peak.x0 + from_peak.x1) / 2 - _middle_x(fruit)) <= 3.5
        assert abs(from_peak.x0 - from_region.x0) <= 2 and abs(from_peak.x1 - from_region.x1) <= 2
    # A peak on the belt, away from every object, names no object.
    image, _, fruit, _ = _belt_frames(1, seed=2)[0]
    belt = np.zeros(fruit.shape, bool)
    belt[5, 5] = True
    assert not fruit[:20, :20].any() and object_region(image, belt) is None


def test_without_a_belt_around_it_the_object_is_the_defect_or_nothing() -> None:
    rng = np.random.default_rng(0)
    defect = np.zeros((128, 128), bool)
    defect[60:70, 40:52] = True
    # A plain belt and a defect the colour of the belt: no object.
    plain = np.full((128, 128, 3), 90, np.uint8)
    assert object_region(plain, defect) is None
    # A texture filling the view (a web): the border's spread is the texture's, and a dark spot on it is all there is.
    web = rng.integers(60, 200, (128, 128, 3)).astype(np.uint8)
    web[62:68, 43:50] = 0
    region = object_region(web, defect)
    assert region is None or (region & ~defect).sum() <= 0.1 * defect.sum()
