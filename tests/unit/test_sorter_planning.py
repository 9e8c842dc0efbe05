"""The sorter's decisions (one ejection per object, duplicates, late alerts) and a lane firing on time, with a
recording actuator in place of a PLC (the real Modbus and MQTT ejectors are in tests/integration)."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from inspector.contracts import Alert, Box
from inspector.errors import ActuatorError
from inspector.sorter.actuators import EjectCommand
from inspector.sorter.lanes import LaneScheduler
from inspector.sorter.line_file import Line, parse_line
from inspector.sorter.metrics import build_sorter_metrics
from inspector.sorter.planning import EjectionPlanner, PlannedEjection
from inspector.sorter.service import OffsetLedger

MS = 1_000_000


def _line(**geometry: object) -> Line:
    defaults = {"belt_speed_m_s": 1.0, "metres_per_pixel": 0.001, "ejector_distance_m": 0.3,
                "actuation_latency_ms": 20, "pulse_ms": 30, "object_length_m": 0.05, **geometry}
    return parse_line({"defaults": defaults, "lanes": [
        {"id": "lane-1", "actuator": {"protocol": "log"}, "cameras": [{"id": "cam-1"}]},
        {"id": "lane-2", "actuator": {"protocol": "log"}, "cameras": [{"id": "cam-2"}]}]})


def _alert(frame_id: str, captured_ns: int, camera: str = "cam-1", x: int | None = None,
           object_x: tuple[int, int] | None = None) -> Alert:
    box = Box(x0=x - 5, y0=100, x1=x + 5, y1=110, area_fraction=0.01) if x is not None else None
    object_box = (Box(x0=object_x[0], y0=60, x1=object_x[1], y1=160, area_fraction=0.1)
                  if object_x is not None else None)
    return Alert(frame_id=frame_id, camera_id=camera, sequence=0, captured_ns=captured_ns, scored_ns=captured_ns,
                 published_ns=captured_ns, score=1.0, threshold=0.5, model_id="m", model_version="1", box=box,
                 object_box=object_box)


def test_the_fruit_arrives_after_its_distance_less_the_box_offset_downstream() -> None:
    planner = EjectionPlanner(_line(), 1000)
    t0 = 10_000 * MS
    # Box centre 28 px right of the frame centre (128): 0.028 m less to go at 1 m/s.
    decision = planner.decide(_alert("f1", t0, x=156), now_ns=t0)
    assert decision.outcome == "scheduled"
    assert decision.arrival_ns == t0 + 272 * MS
    assert decision.fire_ns == t0 + 252 * MS  # 20 ms of actuation latency earlier


@pytest.mark.parametrize(("aim", "object_x", "aimed_x"), [
    ("object", (100, 180), 140),  # the fruit's middle, not its defect at 156
    ("object", (0, 180), 156),  # the fruit is cut by the frame's upstream edge: its middle is unknown
    ("object", (100, 256), 156),  # ... or by the downstream edge
    ("defect", (100, 180), 156),  # the line aims at defects
    ("object", None, 156),  # no object box (the border was not belt)
])
def test_the_pulse_aims_at_the_whole_object_in_view_else_at_the_defect(
        aim: str, object_x: tuple[int, int] | None, aimed_x: int) -> None:
    planner = EjectionPlanner(_line(aim=aim), 1000)
    t0 = 10_000 * MS
    decision = planner.decide(_alert("f1", t0, x=156, object_x=object_x), now_ns=t0)
    assert decision.arrival_ns == t0 + (300 - (aimed_x - 128)) * MS


def test_an_alert_without_a_box_does_not_move_a_located_fruit() -> None:
    planner = EjectionPlanner(_line(), 1000)
    t0 = 10_000 * MS
    # Over its threshold with no region over the pixel threshold: it places the fruit at the frame's centre.
    blind = planner.decide(_alert("f1", t0), now_ns=t0)
    assert blind.ejection is not None and blind.ejection.arrival_ns == t0 + 300 * MS
    # The same fruit's next frame has a box: the fruit is where that box puts it ...
    located = planner.decide(_alert("f2", t0 + 40 * MS, x=138), now_ns=t0 + 50 * MS)
    assert located.ejection is blind.ejection and blind.ejection.arrival_ns == t0 + 330 * MS
    # ... and a further blind frame does not pull it back to the centre.
    planner.decide(_alert("f3", t0 + 80 * MS), now_ns=t0 + 90 * MS)
    assert blind.ejection.arrival_ns == t0 + 330 * MS
    assert blind.ejection.frame_ids == ["f1", "f2", "f3"]


def test_a_frame_with_the_whole_fruit_in_view_places_it_over_frames_that_cut_it() -> None:
    planner = EjectionPlanner(_line(), 1000)
    t0 = 10_000 * MS
    # The fruit enters the frame cut by its upstream edge: only its defect (at 60) places it, 68 px upstream.
    cut = planner.decide(_alert("f1", t0, x=60, object_x=(0, 90)), now_ns=t0)
    assert cut.ejection is not None and cut.ejection.arrival_ns == t0 + 368 * MS
    # 40 ms later (40 px on) the whole of it is in view: its middle (110 - 128 px) is where the pulse aims ...
    whole = planner.decide(_alert("f2", t0 + 40 * MS, x=100, object_x=(60, 160)), now_ns=t0 + 50 * MS)
    assert whole.ejection is cut.ejection and cut.ejection.arrival_ns == t0 + 358 * MS
    # ... and a later frame that cuts it again by the downstream edge does not pull the aim to its defect.
    planner.decide(_alert("f3", t0 + 160 * MS, x=230, object_x=(180, 256)), now_ns=t0 + 170 * MS)
    assert cut.ejection.arrival_ns == t0 + 358 * MS
    # Two whole views are averaged (each frame's box is a few pixels off).
    planner.decide(_alert("f4", t0 + 80 * MS, x=140, object_x=(104, 204)), now_ns=t0 + 90 * MS)
    assert cut.ejection.arrival_ns == t0 + 356 * MS


def test_frames_of_one_object_make_one_ejection_and_a_repeated_frame_is_a_duplicate() -> None:
    planner = EjectionPlanner(_line(), 1000)
    t0 = 10_000 * MS
    first = planner.decide(_alert("f1", t0, x=128), now_ns=t0)
    # The same fruit 40 ms later has moved 40 px downstream: the same arrival.
    second = planner.decide(_alert("f2", t0 + 40 * MS, x=168), now_ns=t0 + 50 * MS)
    again = planner.decide(_alert("f1", t0, x=128), now_ns=t0 + 60 * MS)
    other = planner.decide(_alert("f3", t0 + 100 * MS, x=128), now_ns=t0 + 110 * MS)  # the next fruit
    other_lane = planner.decide(_alert("f4", t0, camera="cam-2", x=128), now_ns=t0)
    assert [d.outcome for d in (first, second, again, other, other_lane)] == \
        ["scheduled", "merged", "duplicate", "scheduled", "scheduled"]
    assert second.ejection is first.ejection and first.ejection is not None
    assert first.ejection.frame_ids == ["f1", "f2"]
    assert other.ejection is not first.ejection and other_lane.lane == "lane-2"


def test_an_alert_after_its_fire_time_is_late_and_an_unknown_camera_has_no_lane() -> None:
    planner = EjectionPlanner(_line(), 1000)
    t0 = 10_000 * MS
    late = planner.decide(_alert("f1", t0, x=128), now_ns=t0 + 290 * MS)
    unknown = planner.decide(_alert("f2", t0, camera="cam-9"), now_ns=t0)
    assert (late.outcome, late.lane) == ("late", "lane-1")
    assert (unknown.outcome, unknown.lane) == ("unknown_camera", "unknown")


def test_remembered_frames_are_bounded() -> None:
    planner = EjectionPlanner(_line(), 100)
    t0 = 10_000 * MS
    for i in range(150):
        planner.decide(_alert(f"f{i}", t0 + i * 200 * MS), now_ns=t0 + i * 200 * MS)
    assert planner.decide(_alert("f0", t0), now_ns=t0).outcome != "duplicate"  # forgotten
    assert planner.decide(_alert("f149", t0), now_ns=t0).outcome == "duplicate"


def test_offsets_are_committed_up_to_the_first_alert_still_waiting_for_its_fruit() -> None:
    ledger = OffsetLedger()
    p = ("defect-alerts", 0)
    for offset in (5, 6, 7):
        ledger.read(p, offset)
    ledger.done(p, 5)
    ledger.done(p, 7)
    assert ledger.committable() == {p: 6}
    assert ledger.committable() == {}
    ledger.done(p, 6)
    assert ledger.committable() == {p: 8}


class RecordingActuator:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, int, EjectCommand]] = []
        self.up = True

    def describe(self) -> str:
        return "recording"

    def start(self) -> None:
        pass

    def pulse_on(self, command: EjectCommand) -> None:
        if self.fail:
            raise ActuatorError("PLC unreachable")
        self.calls.append(("on", time.time_ns(), command))

    def pulse_off(self, command: EjectCommand) -> None:
        self.calls.append(("off", time.time_ns(), command))

    def close(self) -> None:
        pass


def _lane(actuator: RecordingActuator, finals: list[tuple[PlannedEjection, int]]) -> tuple[LaneScheduler,
                                                                                              threading.Lock]:
    lock = threading.Lock()
    scheduler = LaneScheduler("lane-1", actuator, build_sorter_metrics(CollectorRegistry()), lock,
                              lambda ejection, members: finals.append((ejection, len(members))))
    return scheduler.start(), lock


@pytest.mark.parametrize("min_alerts", [1, 2])
def test_a_lane_fires_on_time_once_per_object_and_only_when_confirmed(min_alerts: int) -> None:
    planner = EjectionPlanner(_line(min_alerts=min_alerts), 1000)
    actuator, finals = RecordingActuator(), []
    lane, lock = _lane(actuator, finals)
    now = time.time_ns()
    captured = now - 150 * MS  # the pulse is due 100 ms from now
    with lock:
        decision = planner.decide(_alert("f1", captured, x=128), now_ns=now)
        assert decision.ejection is not None
        lane.schedule(decision.ejection)
    time.sleep(0.4)
    lane.stop()
    assert len(finals) == 1 and finals[0][1] == 1
    if min_alerts == 2:
        assert finals[0][0].state == "unconfirmed" and actuator.calls == []
        return
    assert finals[0][0].state == "fired"
    (on, on_ns, command), (off, off_ns, _) = actuator.calls
    assert (on, off) == ("on", "off") and command.frame_ids == ("f1",)
    assert abs(on_ns - decision.fire_ns) < 15 * MS  # tolerance for a loaded machine, not a benchmark
    assert 25 * MS < off_ns - on_ns < 60 * MS


def test_an_ejector_that_refuses_the_command_fails_the_ejection_and_the_lane_goes_on() -> None:
    planner = EjectionPlanner(_line(), 1000)
    actuator, finals = RecordingActuator(fail=True), []
    lane, lock = _lane(actuator, finals)
    now = time.time_ns()
    with lock:
        for i, offset in enumerate((0, 150)):
            decision = planner.decide(_alert(f"f{i}", now - 250 * MS + offset * MS, x=128), now_ns=now)
            assert decision.ejection is not None
            lane.schedule(decision.ejection)
    time.sleep(0.4)
    lane.stop()
    assert [ejection.state for ejection, _ in finals] == ["failed", "failed"]
