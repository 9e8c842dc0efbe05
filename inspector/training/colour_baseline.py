"""A global-colour baseline: nearest neighbour on per-image colour statistics, to show what colour alone can do."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_HUE_BINS = 8
_SAT_BINS = 4


def colour_features(images_bgr: Sequence[np.ndarray]) -> np.ndarray:
    """(N, F) per-image colour statistics: HSV and Lab channel means and stds, and a coarse hue-saturation histogram."""
    rows = []
    for image in images_bgr:
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
        stats: list[np.ndarray] = []
        for converted in (hsv, lab):
            mean, std = cv2.meanStdDev(converted)
            stats.extend((mean.ravel(), std.ravel()))
        # OpenCV's 8-bit hue runs 0..179; the histogram is normalised so image size does not matter.
        hist = cv2.calcHist([hsv], [0, 1], None, [_HUE_BINS, _SAT_BINS], [0, 180, 0, 256]).ravel()
        stats.append(hist / max(float(hist.sum()), 1.0))
        rows.append(np.concatenate(stats))
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


def colour_baseline_scores(train_images: Sequence[np.ndarray], test_images: Sequence[np.ndarray]) -> np.ndarray:
    """Distance from each test image's standardised colour features to its nearest training image (k=1)."""
    train = colour_features(train_images)
    test = colour_features(test_images)
    mean = train.mean(axis=0)
    # Constant features (e.g. an empty histogram bin) must not divide by zero.
    std = np.where(train.std(axis=0) > 1e-9, train.std(axis=0), 1.0)
    train_z = (train - mean) / std
    test_z = (test - mean) / std
    d2 = (test_z**2).sum(1)[:, None] + (train_z**2).sum(1)[None, :] - 2.0 * test_z @ train_z.T  # (N_test, N_train)
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))
