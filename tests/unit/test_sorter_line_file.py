"""The sorter's line file (inspector/sorter/line_file.py): the shipped examples load, every mistake is one
ConfigError line that names the file, options resolve camera > lane > defaults, and arrival times follow the belt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from inspector.errors import ConfigError
from inspector.sorter.line_file import (
    GEOMETRY_DEFAULTS,
    CameraGeometry,
    Line,
    ModbusConfig,
    MqttConfig,
    load_line,
    parse_line,
)
from tests.deploy_expressions import REPO_ROOT

EXAMPLE = REPO_ROOT / "deploy" / "sorter" / "line.example.yaml"
COMPOSE_LINE = REPO_ROOT / "deploy" / "sorter" / "line.compose.yaml"
GEOMETRY = {"belt_speed_m_s": 0.5, "metres_per_pixel": 0.001, "ejector_distance_m": 0.2}


def lane(lane_id: str, *cameras: str | dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"id": lane_id, "actuator": {"protocol": "log"},
            "cameras": [{"id": c} if isinstance(c, str) else c for c in cameras], **options}


def write(tmp_path: Path, content: Any, name: str = "line.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def camera(line: Line, camera_id: str) -> CameraGeometry:
    found = line.camera(camera_id)
    assert found is not None, camera_id
    return found


def config_error(path: Path) -> str:
    """The message of the ConfigError that loading `path` raises, checked to be one line naming the file."""
    with pytest.raises(ConfigError) as raised:
        load_line(path)
    message = str(raised.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# --- the shipped files ---------------------------------------------------------------------------------------


def test_the_example_loads_with_a_modbus_and_an_mqtt_lane() -> None:
    line = load_line(EXAMPLE)
    assert [lane.lane_id for lane in line.lanes] == ["lane-1", "lane-2"]
    modbus, mqtt = (lane.actuator for lane in line.lanes)
    assert isinstance(modbus, ModbusConfig) and (modbus.host, modbus.port, modbus.unit, modbus.coil) == (
        "10.0.0.5", 502, 1, 0)
    assert isinstance(mqtt, MqttConfig) and (mqtt.topic, mqtt.qos) == ("line/lane-2/eject", 1)
    cam1, cam2, cam3 = (camera(line, c) for c in ("cam-1", "cam-2", "cam-3"))
    assert (cam1.direction, cam1.ejector_distance_m, cam1.pulse_ms) == ("+x", 0.154, 40.0)
    assert (cam2.direction, cam2.ejector_distance_m, cam2.lane) == ("-x", 0.31, "lane-1")
    assert (cam3.ejector_distance_m, cam3.pulse_ms, cam3.min_alerts, cam3.lane) == (0.18, 30.0, 2, "lane-2")


def test_the_compose_line_file_loads() -> None:
    line = load_line(COMPOSE_LINE)
    assert [c.camera_id for lane in line.lanes for c in lane.cameras] == ["cam-1"]


# --- one line per mistake, naming the file -------------------------------------------------------------------


@pytest.mark.parametrize(("content", "expected"), [
    ({"defaults": GEOMETRY, "lanes": [{"id": "lane-1", "cameras": [{"id": "cam-1"}]}]}, "lane 1 (lane-1): actuator"),
    ({"defaults": {"belt_speed_m_s": 0.5, "ejector_distance_m": 0.2}, "lanes": [lane("lane-1", "cam-1")]},
     "camera cam-1 (lane lane-1) has no metres_per_pixel"),
    ({"defaults": GEOMETRY, "lanes": [lane("lane-1", {"pulse_ms": 30})]}, "lane 1 (lane-1): cameras.0.id"),
], ids=["lane without actuator", "camera without geometry", "camera without id"])
def test_a_missing_required_field(tmp_path: Path, content: dict[str, Any], expected: str) -> None:
    message = config_error(write(tmp_path, content))
    assert expected in message and ("required" in message.lower() or "has no" in message)


def test_an_unknown_protocol(tmp_path: Path) -> None:
    content = {"defaults": GEOMETRY,
               "lanes": [lane("lane-1", "cam-1"), {**lane("lane-2", "cam-2"), "actuator": {"protocol": "profinet"}}]}
    message = config_error(write(tmp_path, content))
    assert "lane 2 (lane-2): actuator" in message and "profinet" in message


def test_a_camera_in_two_lanes(tmp_path: Path) -> None:
    content = {"defaults": GEOMETRY, "lanes": [lane("lane-1", "cam-1", "cam-2"), lane("lane-2", "cam-2")]}
    assert "camera 'cam-2' is in two lanes" in config_error(write(tmp_path, content))


def test_bad_yaml(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "lanes:\n  - id: lane-1\n    actuator: {protocol: log\n"))
    assert "not valid YAML at line" in message


def test_a_missing_file(tmp_path: Path) -> None:
    assert "not found" in config_error(tmp_path / "nowhere.yaml")


# --- options and geometry -----------------------------------------------------------------------------------


def test_a_camera_option_overrides_its_lane_which_overrides_defaults() -> None:
    line = parse_line({
        "defaults": {**GEOMETRY, "pulse_ms": 50, "actuation_latency_ms": 10},
        "lanes": [
            lane("lane-1", {"id": "own", "pulse_ms": 20}, "lanes", pulse_ms=30),
            lane("lane-2", "defaults"),
        ]})
    cameras = [camera(line, c) for c in ("own", "lanes", "defaults")]
    assert [c.pulse_ms for c in cameras] == [20.0, 30.0, 50.0]
    # What no level sets comes from the built-in defaults; what only `defaults` sets reaches every camera.
    assert all(c.object_length_m == GEOMETRY_DEFAULTS.object_length_m for c in cameras)
    assert all(c.actuation_latency_ms == 10.0 for c in cameras)
    assert line.camera("elsewhere") is None


@pytest.mark.parametrize(("direction", "point", "expected_s"), [
    # 256 x 256 frames, 1 mm a pixel, the ejector 0.2 m past the centre at 0.5 m/s: 0.4 s from the centre line.
    ("+x", (228, 128), 0.2),  # 100 px right of centre is 0.1 m downstream when the belt runs to the right
    ("-x", (228, 128), 0.6),  # ... and 0.1 m upstream when it runs to the left
    ("+y", (128, 228), 0.2),
    ("-y", (128, 228), 0.6),
    ("+x", (128, 28), 0.4),  # across the belt: no nearer the ejector
    ("-y", (28, 128), 0.4),
])
def test_arrival_follows_the_direction_of_the_belt(direction: str, point: tuple[int, int], expected_s: float) -> None:
    line = parse_line({"defaults": {**GEOMETRY, "direction": direction}, "lanes": [lane("lane-1", "cam-1")]})
    cam = camera(line, "cam-1")
    captured = 1_000_000_000_000
    assert cam.arrival_ns(captured, *point) - captured == pytest.approx(expected_s * 1e9, abs=1)
    assert cam.arrival_ns(captured) - captured == round(0.4e9)  # no box: the frame's centre
