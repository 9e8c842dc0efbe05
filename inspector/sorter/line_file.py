"""The line file (`inspector sort --line line.yaml`, or .toml): where each camera's fruit meets its ejector.

    defaults: {belt_speed_m_s: 0.256, direction: +x, metres_per_pixel: 0.001, ejector_distance_m: 0.154,
               actuation_latency_ms: 15, pulse_ms: 40, object_length_m: 0.03, aim: object}
    lanes:
      - id: lane-1
        actuator: {protocol: modbus, host: 10.0.0.5, port: 502, unit: 1, coil: 0}
        cameras: [{id: cam-1}]
      - id: lane-2
        actuator: {protocol: mqtt, host: 10.0.0.6, topic: line/lane-2/eject}
        ejector_distance_m: 0.18               # any geometry option, per lane ...
        cameras: [{id: cam-2, pulse_ms: 30}]   # ... or per camera

A geometry option a camera leaves out comes from its lane, then from `defaults`. The fruit in a frame reaches the
ejector at `captured_ns + (ejector_distance_m - offset) / belt_speed_m_s`, where offset is how far the point aimed at
lies downstream of the frame's centre (metres_per_pixel times pixels along `direction`); the pulse starts
`actuation_latency_ms` before that. The point aimed at is the middle of the alert's object box (the fruit the defect
lies on) when the whole object is in view, else of its defect box; `aim: defect` always takes the defect's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inspector.config_file import read_config_file
from inspector.contracts import Box
from inspector.errors import ConfigError

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


# How well an alert places what the line aims at, best last: the frame's centre (no box), its defect's box on a
# line aiming at whole objects (anywhere on the fruit), the aimed-at thing itself.
AIM_CENTRE, AIM_DEFECT, AIM_OBJECT = 0, 1, 2


@dataclass(frozen=True)
class AimPoint:
    x_px: float
    y_px: float
    precision: int  # AIM_DEFECT or AIM_OBJECT


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeometryOptions(_Strict):
    """What defaults, a lane or a camera may set; unset, the level above decides."""

    belt_speed_m_s: float | None = Field(None, gt=0)
    direction: Literal["+x", "-x", "+y", "-y"] | None = None  # the way the belt runs in the frame
    metres_per_pixel: float | None = Field(None, gt=0)  # belt length one pixel spans, at the frame's size
    frame_width_px: int | None = Field(None, ge=1)  # the frame as published (the producer's resize)
    frame_height_px: int | None = Field(None, ge=1)
    ejector_distance_m: float | None = Field(None, ge=0)  # from the frame's centre line to the ejector
    actuation_latency_ms: float | None = Field(None, ge=0)  # command to air jet (or paddle) acting
    pulse_ms: float | None = Field(None, gt=0, le=10_000)
    # Alerts whose arrival times lie within this length of belt are one object (one fruit seen in several frames).
    object_length_m: float | None = Field(None, gt=0)
    # Frames of one object that must alert before it is ejected: 1 ejects on any alert; 2 needs a second look.
    min_alerts: int | None = Field(None, ge=1, le=16)
    # Where the pulse aims: the middle of the object the defect lies on (the alert's object box, when the whole of
    # it is in view) or the defect itself (e.g. a marker that paints the spot).
    aim: Literal["object", "defect"] | None = None


GEOMETRY_DEFAULTS = GeometryOptions(direction="+x", frame_width_px=256, frame_height_px=256, actuation_latency_ms=0.0,
                                    pulse_ms=40.0, object_length_m=0.05, min_alerts=1, aim="object")
REQUIRED = ("belt_speed_m_s", "metres_per_pixel", "ejector_distance_m")


class ModbusConfig(_Strict):
    """A PLC coil over Modbus TCP: on at the fire time, off after the pulse."""

    protocol: Literal["modbus"]
    host: str
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=255)  # the Modbus device (slave) id
    coil: int = Field(0, ge=0, le=65535)
    timeout_s: float = Field(1.0, gt=0)


class MqttConfig(_Strict):
    """An ejection command published (QoS 1) to a topic of the lane, for line controllers and IIoT gateways."""

    protocol: Literal["mqtt"]
    host: str
    port: int = Field(1883, ge=1, le=65535)
    topic: str = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    username: str | None = None
    password: str | None = None


class LogConfig(_Strict):
    """Dry run: each ejection is a log line."""

    protocol: Literal["log"]


ActuatorConfig = Annotated[ModbusConfig | MqttConfig | LogConfig, Field(discriminator="protocol")]


class CameraEntry(GeometryOptions):
    id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)


class LaneEntry(GeometryOptions):
    id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    actuator: ActuatorConfig
    cameras: list[CameraEntry] = Field(min_length=1)


class LineFileModel(_Strict):
    defaults: GeometryOptions = GeometryOptions()
    lanes: list[LaneEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> LineFileModel:
        lanes, cameras = set(), set()
        for lane in self.lanes:
            if lane.id in lanes:
                raise ValueError(f"lane id {lane.id!r} appears twice")
            lanes.add(lane.id)
            for camera in lane.cameras:
                if camera.id in cameras:
                    raise ValueError(f"camera {camera.id!r} is in two lanes")
                cameras.add(camera.id)
        return self


@dataclass(frozen=True)
class CameraGeometry:
    """One camera's view of its lane, every option resolved."""

    camera_id: str
    lane: str
    belt_speed_m_s: float
    direction: str
    metres_per_pixel: float
    frame_width_px: int
    frame_height_px: int
    ejector_distance_m: float
    actuation_latency_ms: float
    pulse_ms: float
    object_length_m: float
    min_alerts: int
    aim: str

    def aim_point(self, box: Box | None, object_box: Box | None) -> AimPoint | None:
        """Where in the frame an alert's pulse aims (pixels): the object's middle when the line aims at objects
        and the object box is not cut by the frame's edges along the belt, else the defect box's; None without
        either (the frame's centre)."""
        if self.aim == "object" and object_box is not None:
            lo, hi, size = ((object_box.x0, object_box.x1, self.frame_width_px) if self.direction in ("+x", "-x")
                            else (object_box.y0, object_box.y1, self.frame_height_px))
            if lo > 0 and hi < size:
                return AimPoint((object_box.x0 + object_box.x1) / 2, (object_box.y0 + object_box.y1) / 2, AIM_OBJECT)
        if box is None:
            return None
        return AimPoint((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, AIM_OBJECT if self.aim == "defect" else AIM_DEFECT)

    def downstream_offset_m(self, x_px: float, y_px: float) -> float:
        """How far a point of the frame lies downstream of the frame's centre, in metres of belt."""
        along = {"+x": x_px - self.frame_width_px / 2, "-x": self.frame_width_px / 2 - x_px,
                 "+y": y_px - self.frame_height_px / 2, "-y": self.frame_height_px / 2 - y_px}[self.direction]
        return along * self.metres_per_pixel

    def arrival_ns(self, captured_ns: int, x_px: float | None = None, y_px: float | None = None) -> int:
        """When the point (x, y) of a frame captured at `captured_ns` reaches the ejector (the centre without one)."""
        offset = 0.0 if x_px is None or y_px is None else self.downstream_offset_m(x_px, y_px)
        return captured_ns + round((self.ejector_distance_m - offset) / self.belt_speed_m_s * 1e9)

    @property
    def actuation_latency_ns(self) -> int:
        return round(self.actuation_latency_ms * 1e6)

    @property
    def pulse_ns(self) -> int:
        return round(self.pulse_ms * 1e6)

    @property
    def object_window_ns(self) -> int:
        """The time one object's length takes to pass the ejector."""
        return round(self.object_length_m / self.belt_speed_m_s * 1e9)


@dataclass(frozen=True)
class Lane:
    lane_id: str
    actuator: ModbusConfig | MqttConfig | LogConfig
    cameras: tuple[CameraGeometry, ...]


@dataclass(frozen=True)
class Line:
    """The line file, resolved: lanes with their actuator, and every camera's geometry."""

    lanes: tuple[Lane, ...]

    def camera(self, camera_id: str) -> CameraGeometry | None:
        for lane in self.lanes:
            for camera in lane.cameras:
                if camera.camera_id == camera_id:
                    return camera
        return None

    def lane(self, lane_id: str) -> Lane:
        return next(lane for lane in self.lanes if lane.lane_id == lane_id)


def _explain(path: Path, raw: Any, exc: ValidationError) -> str:
    """One line: which lane or camera (position and id) and which field is wrong, and why."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith(("function-after", "modbus", "mqtt", "log"))]
    where = ".".join(loc) or "the file"
    if len(loc) >= 2 and loc[0] == "lanes" and loc[1].isdigit() and isinstance(raw, dict):
        entry = (raw.get("lanes") or [None] * (int(loc[1]) + 1))[int(loc[1])]
        name = f" ({entry['id']})" if isinstance(entry, dict) and isinstance(entry.get("id"), str) else ""
        where = f"lane {int(loc[1]) + 1}{name}: " + (".".join(loc[2:]) or "entry")
    return f"{path}: {where}: {first['msg']}"


def resolve(parsed: LineFileModel, origin: str = "line file") -> Line:
    """Every camera's geometry from camera, lane, defaults and built-in defaults; ConfigError when one is missing."""
    lanes = []
    for lane in parsed.lanes:
        cameras = []
        for camera in lane.cameras:
            options: dict[str, Any] = {}
            for level in (GEOMETRY_DEFAULTS, parsed.defaults, lane, camera):
                options.update({k: v for k, v in level.model_dump(exclude_none=True).items()
                                if k in GeometryOptions.model_fields})
            missing = [name for name in REQUIRED if name not in options]
            if missing:
                raise ConfigError(f"{origin}: camera {camera.id} (lane {lane.id}) has no {', '.join(missing)}")
            cameras.append(CameraGeometry(camera_id=camera.id, lane=lane.id, **options))
        lanes.append(Lane(lane.id, lane.actuator, tuple(cameras)))
    return Line(tuple(lanes))


def parse_line(raw: Any, origin: str = "line file") -> Line:
    """A line from already-parsed data (tests, the demo); ConfigError (one line) on any bad entry."""
    try:
        parsed = LineFileModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(Path(origin), raw, exc)) from None
    return resolve(parsed, origin)


def load_line(path: Path) -> Line:
    """The line file at `path`, resolved; ConfigError (one line) when it is missing or wrong."""
    return parse_line(read_config_file(path, "line file"), str(path))
