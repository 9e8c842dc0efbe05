"""Images -> model input tensors. One path for training, calibration, evaluation and serving.

CPU decode and frame validation live in `inspector.decode.jpeg`; the GPU batch decode (nvJPEG) lives here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from inspector.decode.jpeg import InputSize, size_hw, to_input_size, to_model_rgb
from inspector.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def to_tensor(images: list[np.ndarray] | np.ndarray, device: torch.device | str = "cpu",
              channels_last: bool = True) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float in [0, 1] on `device`.

    The uint8 batch crosses to the device (4x fewer bytes than float) and is converted there.
    """
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images))
    device = torch.device(device)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W), a channels-last view already
    return x if channels_last else x.contiguous()


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted; ConfigError if the folder is missing or has none."""
    if not folder.is_dir():
        raise ConfigError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def list_labelled_defects(folder: Path) -> list[Path]:
    """Images directly in `folder` and in its subfolders other than good/ (a set's test folder, one subfolder per
    kind of defect), sorted; ConfigError if the folder is missing or has none."""
    if not folder.is_dir():
        raise ConfigError(f"image folder not found: {folder}")
    folders = [folder, *sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "good")]
    files = [p for f in folders for p in sorted(f.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its folders other than good/")
    return files


def load_image(path: Path, size: InputSize) -> np.ndarray:
    """Read an image file -> (size, size, 3) (or a tiled model's (h, w, 3)) uint8 RGB; ConfigError if unreadable."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"cannot read image {path}")
    return to_model_rgb(bgr, size)


def load_images(paths: list[Path], size: InputSize) -> np.ndarray:
    """(N, size, size, 3) (or (N, h, w, 3)) uint8 RGB for a list of image files."""
    return np.stack([load_image(p, size) for p in paths])


def resize_images(images: np.ndarray, size: InputSize) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) (or (N, h, w, 3)), resized as `load_images` resizes each file."""
    if images.shape[1:3] == size_hw(size):
        return images
    return np.stack([to_input_size(image, size) for image in images])


def decode_jpegs_on_device(datas: list[bytes], size: InputSize, device: torch.device) -> torch.Tensor:
    """Batch-decode already validated JPEGs on the GPU -> (B, 3, S, S) float [0, 1]: `nvjpeg_decode`, then
    `to_model_batch`."""
    return to_model_batch(nvjpeg_decode(datas, device), size)


def nvjpeg_decode(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """Batch-decode already validated JPEGs with nvJPEG (torchvision; the hardware decoder where the GPU has
    one) -> list of (3, H, W) uint8 RGB on `device`.

    Frames must have passed `jpeg_dimensions` and the size checks first; a decode failure raises
    RuntimeError and the caller falls back to `decode_jpeg` frame by frame, which names the bad one.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)


def to_model_batch(images: list[torch.Tensor], size: InputSize) -> torch.Tensor:
    """(3, H_i, W_i) uint8 RGB images on the GPU -> (B, 3, S, S) (or a tiled model's (B, 3, h, w)) float [0, 1],
    channels_last."""
    import torch.nn.functional as F

    out_hw = size_hw(size)
    # One camera model per line is the common case: frames of one shape convert and resize as one batch,
    # not one kernel launch per frame (which capped a 256-frame batch at launch overhead).
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(tuple(img.shape), []).append(i)
    out = None
    for shape, idx in by_shape.items():
        x = torch.stack([images[i] for i in idx]).float().div_(255.0)  # (n, 3, H, W)
        if shape[-2:] != out_hw:
            x = F.interpolate(x, size=out_hw, mode="bilinear", antialias=True, align_corners=False)
        if len(by_shape) == 1:
            return x.contiguous(memory_format=torch.channels_last)
        if out is None:
            out = torch.empty((len(images), 3, *out_hw), device=x.device).to(memory_format=torch.channels_last)
        out[torch.tensor(idx, device=x.device)] = x
    assert out is not None, "no images"
    return out


class DeviceJpegDecoder:
    """nvJPEG on a CUDA stream of its own, for a decode thread: `decode` there (one call into torchvision, so
    the thread waits for the GIL once, not once per tensor operation behind a busy main thread), then
    `to_batch` in the scoring thread. The next batch decodes while the model scores the current one."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        # The first call sets up nvJPEG and its hardware decoder: pay that now (before a worker joins its group),
        # not on the first batch. Raises RuntimeError where nvJPEG cannot decode at all.
        probe = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
        self.decode([probe])[1].synchronize()

    def decode(self, datas: list[bytes]) -> tuple[list[torch.Tensor], torch.cuda.Event]:
        """-> ((3, H, W) uint8 images, the event after which they are complete); see `nvjpeg_decode`."""
        with torch.cuda.stream(self.stream):
            images = nvjpeg_decode(datas, self.device)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return images, ready

    def to_batch(self, decoded: tuple[list[torch.Tensor], torch.cuda.Event], size: InputSize) -> torch.Tensor:
        """`decode`'s result -> (B, 3, S, S) float [0, 1] on the calling thread's current stream."""
        images, ready = decoded
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(ready)
        for img in images:
            img.record_stream(stream)  # allocated on the decoder's stream: not to be reused until read here
        return to_model_batch(images, size)
