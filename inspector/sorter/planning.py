"""What to do with each alert: when its fruit reaches the ejector, whether it is the same fruit as an alert before
(one ejection per object), a duplicate of one, or too late to eject. Pure logic on the caller's clock; the
service holds the lock around it and the lanes' scheduler threads fire what it plans.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

from inspector.contracts import Alert
from inspector.sorter.line_file import AIM_CENTRE, CameraGeometry, Line
from inspector.sorter.metrics import UNKNOWN_LANE

# How long a planned ejection is kept after its fruit passed, so that a later alert of the same fruit merges into it.
_KEEP_AFTER_ARRIVAL_NS = 5_000_000_000

EjectionState = Literal["scheduled", "fired", "failed", "unconfirmed"]


@dataclass(eq=False)
class PlannedEjection:
    """One object's ejection: opened by its first alert, joined by the alerts of its other frames."""

    lane: str
    camera: CameraGeometry
    estimates: list[tuple[int, int]]  # each member alert's (aim precision, when the fruit reaches the ejector)
    frame_ids: list[str]
    alerts: list[Alert]
    state: EjectionState = "scheduled"
    fired_ns: int | None = None  # when the pulse started (fired) or was tried (failed)
    finalised: bool = False  # its members' outcomes were handed on

    @property
    def arrival_ns(self) -> int:
        """The mean of the members' most precise estimates (each frame saw the fruit at another place of the belt):
        a frame with the whole fruit in view places its middle, a frame that cuts it only its defect, somewhere
        on the fruit, and an alert without a box only the frame's centre."""
        best = max(precision for precision, _ in self.estimates)
        arrivals = [arrival for precision, arrival in self.estimates if precision == best]
        return sum(arrivals) // len(arrivals)

    @property
    def fire_ns(self) -> int:
        return self.arrival_ns - self.camera.actuation_latency_ns

    @property
    def confirmed(self) -> bool:
        return len(self.frame_ids) >= self.camera.min_alerts


@dataclass(frozen=True)
class Decision:
    """What became of one alert at once; "scheduled" and a "merged" into a scheduled ejection become final when it
    fires (see PlannedEjection.state)."""

    outcome: Literal["scheduled", "merged", "duplicate", "late", "unknown_camera"]
    lane: str
    alert: Alert
    ejection: PlannedEjection | None = None  # the ejection it opened or joined
    arrival_ns: int | None = None  # this alert's own estimate
    fire_ns: int | None = None


@dataclass
class LanePlan:
    """A lane's ejections, oldest first, kept until well after their fruit passed."""

    ejections: deque[PlannedEjection] = field(default_factory=deque)

    def nearest(self, arrival_ns: int, window_ns: int) -> PlannedEjection | None:
        best, best_gap = None, window_ns + 1
        for ejection in self.ejections:
            gap = abs(ejection.arrival_ns - arrival_ns)
            if gap < best_gap:
                best, best_gap = ejection, gap
        return best

    def forget_before(self, now_ns: int) -> None:
        while self.ejections and self.ejections[0].arrival_ns < now_ns - _KEEP_AFTER_ARRIVAL_NS:
            if not self.ejections[0].finalised:
                break  # its outcome is still to be handed on
            self.ejections.popleft()


class EjectionPlanner:
    """Decides each alert against the line's geometry and the lane's ejections so far."""

    def __init__(self, line: Line, remember_frames: int) -> None:
        self.line = line
        self.lanes = {lane.lane_id: LanePlan() for lane in line.lanes}
        self._seen: OrderedDict[str, None] = OrderedDict()  # frame ids, oldest first
        self._remember = remember_frames

    def decide(self, alert: Alert, now_ns: int) -> Decision:
        camera = self.line.camera(alert.camera_id)
        lane = camera.lane if camera is not None else UNKNOWN_LANE
        if alert.frame_id in self._seen:
            return Decision("duplicate", lane, alert)
        self._remember_frame(alert.frame_id)
        if camera is None:
            return Decision("unknown_camera", lane, alert)
        point = camera.aim_point(alert.box, alert.object_box)
        arrival = (camera.arrival_ns(alert.captured_ns) if point is None
                   else camera.arrival_ns(alert.captured_ns, point.x_px, point.y_px))
        estimate = (AIM_CENTRE if point is None else point.precision, arrival)
        fire = arrival - camera.actuation_latency_ns
        plan = self.lanes[lane]
        plan.forget_before(now_ns)
        same_object = plan.nearest(arrival, camera.object_window_ns)
        if same_object is not None:
            same_object.frame_ids.append(alert.frame_id)
            same_object.alerts.append(alert)
            if same_object.state == "scheduled":  # a better estimate while it can still move the pulse
                same_object.estimates.append(estimate)
            return Decision("merged", lane, alert, same_object, arrival, fire)
        if fire < now_ns:
            return Decision("late", lane, alert, None, arrival, fire)
        ejection = PlannedEjection(lane, camera, [estimate], [alert.frame_id], [alert])
        plan.ejections.append(ejection)
        return Decision("scheduled", lane, alert, ejection, arrival, fire)

    def _remember_frame(self, frame_id: str) -> None:
        self._seen[frame_id] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
