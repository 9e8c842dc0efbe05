"""Bananas moving along a belt past one camera, with the ground truth a sorter is scored by (numpy + cv2 only).

Objects pass the camera one after another: object k holds the camera for T_k ~ U[0.7, 1.3] / objects_per_second,
and every frame captured in that interval shows it, moving at the belt's speed across the middle of the frame.
Its scene (shape, colours, defect, belt patch) is drawn once; from frame to frame only its position along the
belt and the camera noise change, so each frame is a `render_scene`-like frame with one whole banana.

Positions follow the belt: a point of object k lies at p(t) = p(t0) + v (t - t0) along the belt, drawn at
W/2 + (p(t) - camera centre) / metres_per_pixel, so `CameraGeometry.arrival_ns` of any of its frames gives the
same arrival at the ejector. Pixel coordinates of the truth are pixel edges (0..W across the frame), as the
alerts' boxes are; the scene itself is drawn in pixel centres (edges minus half a pixel).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from inspector.errors import ConfigError
from inspector.sorter.line_file import CameraGeometry
from inspector.synthetic.bananas import DEFECT_KINDS, Scene, centre_limits, draw_params, grow_defect, rasterise
from inspector.synthetic.scene import SceneParams

INTERVAL_SPREAD = (0.7, 1.3)  # an object's time in view, as a multiple of 1 / objects_per_second
# Which coordinate of (x, y) the belt runs along, and which way.
_AXES = {"+x": (0, 1.0), "-x": (0, -1.0), "+y": (1, 1.0), "-y": (1, -1.0)}
_MAX_SHAPE_DRAWS = 1000


@dataclass(frozen=True)
class BeltObject:
    """Ground truth of one object (a banana) a belt camera saw, and when it reaches the ejector.

    The reference point is where an ejector should push it: the centre of the banana's bounding box, defect
    or not (the sorter aims there from the alert's object box)."""

    object_id: str
    camera_id: str
    lane: str
    label: str  # "good" or a defect kind
    frames: tuple[int, ...]  # indices (= published sequence numbers) of the frames showing it
    target_x_px: float  # the reference point in its first frame, pixel edges
    target_y_px: float
    arrival_ns: int  # when the reference point reaches the ejector: since the run's start in a plan, else absolute

    @property
    def defective(self) -> bool:
        return self.label != "good"

    def started_at(self, start_ns: int) -> BeltObject:
        """The same object with its arrival made absolute, for a run that started at `start_ns`."""
        return replace(self, arrival_ns=self.arrival_ns + start_ns)

    def seen_before(self, n_frames: int) -> BeltObject:
        """The same object with only its frames among the first `n_frames` (a run that stopped mid-object)."""
        return replace(self, frames=tuple(i for i in self.frames if i < n_frames))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BeltObject:
        data = json.loads(text)
        return cls(**{**data, "frames": tuple(data["frames"])})


@dataclass(frozen=True)
class BeltFrame:
    """One planned frame: when it is captured, the object it shows, and that object's scene at this moment."""

    index: int
    offset_ns: int  # capture time since the run's start
    object: BeltObject  # the object's truth, as planned (all its frames)
    params: SceneParams  # its scene at this frame's position, with this frame's camera noise
    reference_px: tuple[float, float]  # where the object's reference point is in this frame, pixel edges

    def render(self) -> Scene:
        return rasterise(self.params)


class BeltStream:
    """One lane's objects passing one camera, planned frame by frame; the same seed plans the same run."""

    def __init__(self, geometry: CameraGeometry, *, fps: float, objects_per_second: float = 4.0,
                 defect_rate: float = 0.05, seed: int = 0, id_prefix: str | None = None) -> None:
        if geometry.frame_width_px != geometry.frame_height_px:
            raise ConfigError(f"camera {geometry.camera_id}: a belt frame is square, not "
                              f"{geometry.frame_width_px}x{geometry.frame_height_px} px")
        if geometry.frame_width_px < 32:
            raise ConfigError(f"camera {geometry.camera_id}: a belt frame needs 32 px or more")
        if objects_per_second <= 0 or not 0 <= defect_rate <= 1:
            raise ConfigError("objects per second must be above 0 and the defect rate within 0..1")
        # The shortest time in view must hold a frame, or some objects would pass unseen.
        if fps <= 0 or INTERVAL_SPREAD[0] / objects_per_second <= 1.0 / fps + 1e-6:
            raise ConfigError(f"{fps:g} fps cannot see {objects_per_second:g} objects per second; use at least "
                              f"{objects_per_second / INTERVAL_SPREAD[0]:.1f} fps")
        self.geometry = geometry
        self.fps = fps
        self.objects_per_second = objects_per_second
        self.defect_rate = defect_rate
        self.seed = seed
        self.id_prefix = f"{geometry.camera_id}-obj-" if id_prefix is None else id_prefix
        self.size = geometry.frame_width_px
        self.speed_px_s = geometry.belt_speed_m_s / geometry.metres_per_pixel

    def frame_ns(self, index: int) -> int:
        """When frame `index` is captured, since the run's start."""
        return round(index * 1e9 / self.fps)

    def frames_for(self, seconds: float) -> int:
        """How many frames `seconds` of the run hold."""
        return round(seconds * self.fps)

    def frames(self) -> Iterator[BeltFrame]:
        """Every frame of the run, in order, without end."""
        shapes = np.random.default_rng([self.seed, 0])
        noise = np.random.default_rng([self.seed, 1])
        start_ns = index = k = 0
        while True:
            interval_ns = round(shapes.uniform(*INTERVAL_SPREAD) / self.objects_per_second * 1e9)
            indices = []
            while self.frame_ns(index) < start_ns + interval_ns:
                indices.append(index)
                index += 1
            yield from self._object_frames(shapes, noise, k, start_ns, interval_ns, tuple(indices))
            start_ns += interval_ns
            k += 1

    def objects(self, n_frames: int) -> list[BeltObject]:
        """The truth of every object the first `n_frames` frames show (relative arrival times)."""
        return seen_objects(itertools.islice(self.frames(), n_frames))

    def _object_frames(self, shapes: np.random.Generator, noise: np.random.Generator, k: int, start_ns: int,
                       interval_ns: int, indices: tuple[int, ...]) -> Iterator[BeltFrame]:
        defect = None
        if shapes.random() < self.defect_rate:
            defect = DEFECT_KINDS[int(shapes.integers(len(DEFECT_KINDS)))]
        axis, sign = _AXES[self.geometry.direction]
        travel_px = self.speed_px_s * interval_ns / 1e9
        params, low, high = self._fitting_shape(shapes, defect, axis, travel_px)
        # Mid-interval the banana is centred on its fitting range, so its travel is a window around the middle.
        mid_ns, mid_px, drawn = start_ns + interval_ns / 2, (low + high) / 2, params.centre

        def centre_at(t_ns: int) -> tuple[float, float]:
            centre = list(drawn)  # across the belt it stays where it was drawn
            centre[axis] = mid_px + sign * self.speed_px_s * (t_ns - mid_ns) / 1e9
            return centre[0], centre[1]

        first_ns = self.frame_ns(indices[0])
        params, scene = grow_defect(replace(params, centre=centre_at(first_ns)))
        target = _reference_point(scene)
        truth = BeltObject(
            object_id=f"{self.id_prefix}{k}", camera_id=self.geometry.camera_id, lane=self.geometry.lane,
            label=defect or "good", frames=indices, target_x_px=target[0], target_y_px=target[1],
            arrival_ns=self.geometry.arrival_ns(first_ns, *target))
        for i in indices:
            t_ns = self.frame_ns(i)
            reference = list(target)
            reference[axis] += sign * self.speed_px_s * (t_ns - first_ns) / 1e9
            noise_offset = (int(noise.integers(self.size)), int(noise.integers(self.size)))
            yield BeltFrame(i, t_ns, truth, replace(params, centre=centre_at(t_ns), noise_offset=noise_offset),
                            (reference[0], reference[1]))

    def _fitting_shape(self, shapes: np.random.Generator, defect: str | None, axis: int,
                       travel_px: float) -> tuple[SceneParams, float, float]:
        """A banana drawn until the whole of it stays in the frame over its travel -> (params, low, high): the
        range of its arc centre along the belt. Shapes that do not fit are drawn again, which at a fast belt
        favours bananas lying across it: every one of them is still a shape the default model was trained on."""
        for _ in range(_MAX_SHAPE_DRAWS):
            params = draw_params(shapes, self.size, defect)
            low, high = centre_limits(params)[axis]
            if high - low >= travel_px:
                return params, float(low), float(high)
        raise ConfigError(f"camera {self.geometry.camera_id}: no banana stays in a {self.size}-px frame over "
                          f"{travel_px:.0f} px of belt; lower the belt speed in pixels ({self.speed_px_s:.0f} px/s "
                          f"= belt_speed_m_s / metres_per_pixel) or raise objects per second")


def _reference_point(scene: Scene) -> tuple[float, float]:
    """The centre of the banana's bounding box, stem and defect included (pixel edges)."""
    cols, rows = np.flatnonzero(scene.fruit.any(axis=0)), np.flatnonzero(scene.fruit.any(axis=1))
    return float(cols[0] + cols[-1] + 1) / 2, float(rows[0] + rows[-1] + 1) / 2


def seen_objects(frames: Iterable[BeltFrame]) -> list[BeltObject]:
    """The truth of the objects these frames (the start of a run) show, each with only its frames among them."""
    objects: dict[str, BeltObject] = {}
    n_frames = 0
    for frame in frames:
        objects.setdefault(frame.object.object_id, frame.object)
        n_frames = frame.index + 1
    return [obj.seen_before(n_frames) for obj in objects.values()]


@dataclass(frozen=True)
class RenderedFrame:
    """A planned frame and its JPEG bytes, ready to publish."""

    plan: BeltFrame
    jpeg: bytes


@dataclass(frozen=True)
class BeltRecording:
    """A pre-rendered run: its frames in order and the truth of every object they show (relative arrivals)."""

    frames: tuple[RenderedFrame, ...]
    objects: tuple[BeltObject, ...]


def prerender(stream: BeltStream, n_frames: int, *, jpeg_quality: int = 90) -> BeltRecording:
    """The first `n_frames` frames of `stream` (`stream.frames_for(seconds)` for a duration), JPEG-encoded, so a
    benchmark replays them and measures the line, not the renderer."""
    plans = list(itertools.islice(stream.frames(), n_frames))
    frames = tuple(RenderedFrame(plan, encode_jpeg(plan.render().image, jpeg_quality)) for plan in plans)
    return BeltRecording(frames, tuple(seen_objects(plans)))


def write_good_frames(out_dir: Path, stream: BeltStream, n_frames: int, *, jpeg_quality: int = 90) -> int:
    """The first `n_frames` frames of a belt without defects (`stream.defect_rate` 0), as its camera sends them
    (JPEG), into `out_dir` as belt-NNNN.jpg: good frames of the line for training its model. Returns the count."""
    if stream.defect_rate:
        raise ConfigError("good frames for training come from a belt without defects (defect rate 0)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, plan in enumerate(itertools.islice(stream.frames(), n_frames)):
        (out_dir / f"belt-{i:04d}.jpg").write_bytes(encode_jpeg(plan.render().image, jpeg_quality))
    return n_frames


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 BGR -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ConfigError("OpenCV could not JPEG-encode a belt frame")
    return buf.tobytes()


def camera_ready_file(start_file: Path, camera_id: str) -> Path:
    """Where a pre-rendered belt camera says it has rendered and waits for `start_file` (`producers belt
    --start-file`), so that a run starts its cameras together."""
    return start_file.with_name(f"{start_file.name}.{camera_id}.ready")


def write_truth(path: Path, objects: Iterable[BeltObject]) -> None:
    """One JSON line per object."""
    path.write_text("".join(obj.to_json() + "\n" for obj in objects))


def read_truth(path: Path) -> list[BeltObject]:
    """The objects `write_truth` wrote."""
    return [BeltObject.from_json(line) for line in path.read_text().splitlines() if line.strip()]
