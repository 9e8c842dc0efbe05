"""How well a belt run was sorted: each recorded pulse matched to the object it hit, scored against the truth.

A pulse is the coil's on time; the air jet reaches the fruit an actuation latency later (the hit time). It belongs
to the object of its lane whose arrival at the ejector is nearest the hit time, if that is within half of the
smaller gap between that object and its neighbours; otherwise it hit nothing (spurious). An object is ejected on
time when its pulse's hit time is within half a pulse of its arrival.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from inspector.sorter.line_file import CameraGeometry, Line
from inspector.synthetic.belt import BeltObject

Outcome = Literal["ejected_on_time", "ejected_off_time", "late", "not_ejected"]
OUTCOMES: tuple[Outcome, ...] = ("ejected_on_time", "ejected_off_time", "late", "not_ejected")


@dataclass(frozen=True)
class ObjectResult:
    """What happened to one object: late means its alerts reached the sorter after the fire time."""

    object: BeltObject
    outcome: Outcome
    error_ns: int | None = None  # hit time minus true arrival, for an ejected object

    @property
    def ejected(self) -> bool:
        return self.outcome in ("ejected_on_time", "ejected_off_time")


@dataclass(frozen=True)
class BeltReport:
    """Every object's result, and the pulses that hit no object (spurious) or an already ejected one (repeated)."""

    results: tuple[ObjectResult, ...]
    spurious_pulses: int
    repeated_pulses: int

    def count(self, outcome: Outcome, *, defective: bool) -> int:
        return sum(r.outcome == outcome and r.object.defective == defective for r in self.results)

    @property
    def n_defective(self) -> int:
        return sum(r.object.defective for r in self.results)

    @property
    def n_good(self) -> int:
        return len(self.results) - self.n_defective

    @property
    def recall(self) -> float:
        """Defective objects ejected on time / defective objects (nan without any)."""
        n = self.n_defective
        return self.count("ejected_on_time", defective=True) / n if n else float("nan")

    @property
    def false_ejection_rate(self) -> float:
        """Good objects ejected, on time or not / good objects (nan without any)."""
        ejected = sum(r.ejected and not r.object.defective for r in self.results)
        return ejected / self.n_good if self.n_good else float("nan")

    def fire_error_ms(self, quantile: float) -> float:
        """A quantile of |hit time - arrival| over the ejected defective objects, in ms (nan without any).

        Good objects ejected are left out: a false alarm's box is anywhere on the fruit, so its error says
        nothing about the timing of the ejections that matter (they count in the false-ejection rate)."""
        errors = [abs(r.error_ns) for r in self.results if r.error_ns is not None and r.object.defective]
        return float(np.percentile(errors, 100 * quantile)) / 1e6 if errors else float("nan")

    def summary_lines(self) -> list[str]:
        """For printing; the last line has the three figures a belt run is judged by."""
        d = {o: self.count(o, defective=True) for o in OUTCOMES}
        g = {o: self.count(o, defective=False) for o in OUTCOMES}
        ejected_defective = d["ejected_on_time"] + d["ejected_off_time"]
        pulses = (ejected_defective + g["ejected_on_time"] + g["ejected_off_time"] + self.spurious_pulses
                  + self.repeated_pulses)
        return [
            f"belt objects {len(self.results)} ({self.n_defective} defective, {self.n_good} good); pulses {pulses} "
            f"({self.spurious_pulses} hit no object, {self.repeated_pulses} repeated)",
            f"defective: {d['ejected_on_time']} ejected on time, {d['ejected_off_time']} off time, {d['late']} late, "
            f"{d['not_ejected']} not ejected; good: {g['ejected_on_time'] + g['ejected_off_time']} ejected, "
            f"{g['late']} late, {g['not_ejected']} passed",
            f"ejection recall {_percent(self.recall)} ({d['ejected_on_time']}/{self.n_defective}); false ejections "
            f"{_percent(self.false_ejection_rate)} ({g['ejected_on_time'] + g['ejected_off_time']}/{self.n_good}); "
            f"fire-time error p50 {_ms(self.fire_error_ms(0.5))}, p99 {_ms(self.fire_error_ms(0.99))} "
            f"({ejected_defective} defective ejected)",
        ]


def _percent(fraction: float) -> str:
    return "n/a" if np.isnan(fraction) else f"{100 * fraction:.1f} %"


def _ms(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.1f} ms"


def score_ejections(objects: Sequence[BeltObject], pulses: Mapping[str, Sequence[int]], line: Line,
                    late_object_ids: Collection[str] = ()) -> BeltReport:
    """Score a run: `objects` its truth (absolute arrivals), `pulses` each lane's coil on times (ns since the
    epoch), `line` the geometry the sorter used, `late_object_ids` the objects of alerts on the late-ejections
    topic (an Alert carries its frame's object id)."""
    errors: dict[str, list[int]] = {}  # object id -> hit time - arrival of every pulse that hit it
    spurious = 0
    for lane_id, on_times in pulses.items():
        lane_objects = sorted((o for o in objects if o.lane == lane_id), key=lambda o: o.arrival_ns)
        windows = _match_windows(lane_objects, line)
        for on_ns in on_times:
            hit = _nearest(lane_objects, windows, on_ns, line)
            if hit is None:
                spurious += 1
            else:
                obj, error = hit
                errors.setdefault(obj.object_id, []).append(error)
    results = []
    for obj in objects:
        hits = errors.get(obj.object_id)
        if hits:
            error = min(hits, key=abs)  # a repeated pulse does not undo the one that hit
            on_time = abs(error) <= _camera(line, obj).pulse_ns / 2
            results.append(ObjectResult(obj, "ejected_on_time" if on_time else "ejected_off_time", error))
        else:
            results.append(ObjectResult(obj, "late" if obj.object_id in late_object_ids else "not_ejected"))
    repeated = sum(len(hits) - 1 for hits in errors.values())
    return BeltReport(tuple(results), spurious, repeated)


def _match_windows(objects: list[BeltObject], line: Line) -> list[float]:
    """Half the smaller gap to each object's neighbours along the lane; a lone object's own length in time
    (the line file's object_length_m), so a pulse long after it is not counted as hitting it."""
    arrivals = [obj.arrival_ns for obj in objects]
    windows = []
    for i, arrival in enumerate(arrivals):
        gaps = [arrival - arrivals[i - 1]] if i > 0 else []
        gaps += [arrivals[i + 1] - arrival] if i + 1 < len(arrivals) else []
        windows.append(min(gaps) / 2 if gaps else float(_camera(line, objects[i]).object_window_ns))
    return windows


def _nearest(lane_objects: list[BeltObject], windows: list[float], on_ns: int,
             line: Line) -> tuple[BeltObject, int] | None:
    """The object a pulse switched on at `on_ns` hit, and hit time minus its arrival; None when it hit nothing."""
    hits = [(obj, on_ns + _camera(line, obj).actuation_latency_ns - obj.arrival_ns, window)
            for obj, window in zip(lane_objects, windows, strict=True)]
    if not hits:
        return None
    obj, error, window = min(hits, key=lambda hit: abs(hit[1]))
    return (obj, error) if abs(error) <= window else None


def _camera(line: Line, obj: BeltObject) -> CameraGeometry:
    camera = line.camera(obj.camera_id)
    if camera is None:
        raise ValueError(f"object {obj.object_id} is from camera {obj.camera_id}, which the line file does not have")
    return camera
