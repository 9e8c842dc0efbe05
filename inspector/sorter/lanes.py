"""One thread per lane fires that lane's planned ejections on time: it sleeps until shortly before the next pulse,
spins the last stretch (a sleep alone wakes a few milliseconds late on a busy machine), and talks to the actuator
outside the planner's lock so that a slow ejector never holds up the alerts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from inspector.contracts import Alert
from inspector.errors import ActuatorError
from inspector.sorter.actuators import Actuator, EjectCommand
from inspector.sorter.metrics import SorterMetrics
from inspector.sorter.planning import EjectionState, PlannedEjection

log = logging.getLogger(__name__)

_SPIN_NS = 1_500_000  # the last stretch before a pulse is spun, not slept


class LaneScheduler:
    """Fires `schedule`d ejections of one lane at their fire time and ends each pulse after its length.

    `lock` is the planner's: a merge may move an ejection's time, and `poke()` (under the lock) wakes the thread
    to look again. `on_final(ejection, members)` is called (without the lock) once an ejection has fired, failed or
    was left unconfirmed, with the alerts it had then."""

    def __init__(self, lane: str, actuator: Actuator, metrics: SorterMetrics, lock: threading.Lock,
                 on_final: Callable[[PlannedEjection, list[Alert]], None]) -> None:
        self.lane = lane
        self.actuator = actuator
        self.metrics = metrics
        self._wake = threading.Condition(lock)
        self._on_final = on_final
        self._pending: list[PlannedEjection] = []
        self._releases: list[tuple[int, EjectCommand]] = []  # (pulse end ns, command) of pulses that are on
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"lane-{lane}", daemon=True)

    def start(self) -> LaneScheduler:
        self.actuator.start()
        self._thread.start()
        return self

    def schedule(self, ejection: PlannedEjection) -> None:
        """Call with the planner's lock held."""
        self._pending.append(ejection)
        self._wake.notify()

    def poke(self) -> None:
        """An ejection's time moved (call with the lock held)."""
        self._wake.notify()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Fire what is due within `timeout_s`, end pulses that are on, then stop."""
        deadline = time.time_ns() + int(timeout_s * 1e9)
        while time.time_ns() < deadline:
            with self._wake:
                if not self._pending and not self._releases:
                    break
            time.sleep(0.01)
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=2.0)
        self.actuator.close()

    # ---- the lane's thread --------------------------------------------------------------------------

    def _next(self) -> tuple[int, PlannedEjection | None, EjectCommand | None] | None:
        """The next action (time, ejection to fire | None, command to release | None); lock held."""
        best: tuple[int, PlannedEjection | None, EjectCommand | None] | None = None
        for ejection in self._pending:
            if best is None or ejection.fire_ns < best[0]:
                best = (ejection.fire_ns, ejection, None)
        for at, command in self._releases:
            if best is None or at < best[0]:
                best = (at, None, command)
        return best

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stop:
                    return
                action = self._next()
                if action is None:
                    self._wake.wait(0.5)
                    continue
                delay = action[0] - time.time_ns()
                if delay > _SPIN_NS:
                    self._wake.wait((delay - _SPIN_NS) / 1e9)
                    continue
            at, ejection, command = action
            while time.time_ns() < at:
                time.sleep(0)
            if ejection is not None:
                self._fire(ejection)
            elif command is not None:
                self._release(at, command)

    def _fire(self, ejection: PlannedEjection) -> None:
        with self._wake:
            if ejection not in self._pending or ejection.fire_ns > time.time_ns() + 500_000:
                return  # a merge moved it later: wait again
            self._pending.remove(ejection)
            planned = ejection.fire_ns
            confirmed = ejection.confirmed
            command = EjectCommand(self.lane, ejection.camera.camera_id, planned, ejection.arrival_ns,
                                   ejection.camera.pulse_ms, tuple(ejection.frame_ids))
        started = time.time_ns()
        state: EjectionState = "unconfirmed"
        if confirmed:
            try:
                self.actuator.pulse_on(command)
                state = "fired"
            except ActuatorError as exc:
                state = "failed"
                log.error("lane %s: ejection not fired: %s", self.lane, exc)
        with self._wake:  # settled and its members taken in one step (see Sorter._handle)
            ejection.state = state
            ejection.fired_ns = started if confirmed else None
            ejection.finalised = True
            members = list(ejection.alerts)
            if state == "fired":
                self._releases.append((started + ejection.camera.pulse_ns, command))
        if state == "fired":
            self.metrics.pulses.labels(self.lane).inc()
            self.metrics.fire_error_seconds.labels(self.lane).observe(abs(started - planned) / 1e9)
        self._on_final(ejection, members)

    def _release(self, at: int, command: EjectCommand) -> None:
        with self._wake:
            self._releases.remove((at, command))
        try:
            self.actuator.pulse_off(command)
        except ActuatorError as exc:
            log.error("lane %s: pulse not ended (the ejector's own pulse timer must end it): %s", self.lane, exc)
