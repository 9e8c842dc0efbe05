"""The ejectors, one adapter per protocol behind one interface: a Modbus TCP coil, an MQTT command, a log line.

A lane's scheduler thread calls `pulse_on` at the fire time and `pulse_off` one pulse later; an adapter raises
ActuatorError when the ejector cannot take the command (that ejection counts as failed) and reconnects in the
background, with backoff, while `up` is False.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from inspector.settings import SorterSettings
from inspector.sorter.line_file import LogConfig, ModbusConfig, MqttConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EjectCommand:
    """One ejection as the actuator is told it."""

    lane: str
    camera_id: str
    fire_ns: int  # when the pulse starts (the fruit's arrival minus the actuation latency)
    arrival_ns: int  # when the fruit reaches the ejector
    pulse_ms: float
    frame_ids: tuple[str, ...]  # the alerts merged into this ejection


class Actuator(Protocol):
    """An ejector of one lane."""

    @property
    def up(self) -> bool:
        """True while the ejector is reachable (as far as the last command or reconnect attempt knows)."""
        ...

    def describe(self) -> str: ...
    def start(self) -> None:
        """Connect, or start reconnecting in the background; never raises for an unreachable ejector."""
        ...

    def pulse_on(self, command: EjectCommand) -> None: ...
    def pulse_off(self, command: EjectCommand) -> None: ...
    def close(self) -> None: ...


class Reachability:
    """Whether an adapter's ejector is reachable; each change is logged once, not every reconnect attempt."""

    def __init__(self, lane: str, describe: Callable[[], str], reconnect_min_s: float, reconnect_max_s: float) -> None:
        self.lane = lane
        self.up = False
        self._describe = describe
        self._waits = (reconnect_min_s, reconnect_max_s)
        self._lock = threading.Lock()
        self._reported: bool | None = None  # the state last logged

    def mark(self, up: bool, reason: str = "") -> None:
        with self._lock:
            self.up = up
            if self._reported is up:
                return
            self._reported = up
        if up:
            log.info("lane %s: ejector up (%s)", self.lane, self._describe())
        else:
            log.warning("lane %s: ejector down (%s): %s; reconnecting in the background (waits %g s doubling to %g s)",
                        self.lane, self._describe(), reason, *self._waits)


class LogActuator:
    """Dry run: logs every ejection."""

    up = True

    def __init__(self, lane: str) -> None:
        self.lane = lane

    def describe(self) -> str:
        return f"log ({self.lane})"

    def start(self) -> None:
        pass

    def pulse_on(self, command: EjectCommand) -> None:
        log.info("eject lane %s: camera %s, arrival in %.0f ms, frames %s", command.lane, command.camera_id,
                 (command.arrival_ns - command.fire_ns) / 1e6, ",".join(command.frame_ids))

    def pulse_off(self, command: EjectCommand) -> None:
        pass

    def close(self) -> None:
        pass


def build_actuator(lane: str, config: ModbusConfig | MqttConfig | LogConfig,
                   settings: SorterSettings) -> Actuator:
    """The adapter for a lane's actuator config."""
    if isinstance(config, ModbusConfig):
        from inspector.sorter.modbus import ModbusCoilActuator

        return ModbusCoilActuator(lane, config, settings)
    if isinstance(config, MqttConfig):
        from inspector.sorter.mqtt import MqttCommandActuator

        return MqttCommandActuator(lane, config, settings)
    return LogActuator(lane)
