"""The Modbus TCP ejector: a PLC coil written on at the fire time and off one pulse later (pymodbus, synchronous).

A background thread keeps the connection: it connects with backoff while the PLC is unreachable, and while
connected notices a connection the PLC closed, so the next ejection after a PLC restart is not lost.
"""

from __future__ import annotations

import logging
import select
import socket
import threading

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from inspector.errors import ActuatorError
from inspector.settings import SorterSettings
from inspector.sorter.actuators import EjectCommand, Reachability
from inspector.sorter.line_file import ModbusConfig

log = logging.getLogger(__name__)

_PROBE_S = 0.5  # how often an idle connection is checked for a close by the PLC


class ModbusCoilActuator:
    """A lane's ejector on a PLC coil: `pulse_on` writes it True, `pulse_off` False, one request each."""

    def __init__(self, lane: str, config: ModbusConfig, settings: SorterSettings) -> None:
        self.lane = lane
        self.config = config
        self._reconnect_min_s = settings.reconnect_min_s
        self._reconnect_max_s = max(settings.reconnect_max_s, settings.reconnect_min_s)
        # retries=0: a PLC that does not answer fails the command after one timeout, not after four.
        self._client = ModbusTcpClient(config.host, port=config.port, timeout=config.timeout_s, retries=0,
                                       name=f"sorter-{lane}")
        self._io = threading.Lock()  # one request on the connection at a time (lane thread, keeper thread)
        self._reach = Reachability(lane, self.describe, self._reconnect_min_s, self._reconnect_max_s)
        self._wake = threading.Event()  # a command failed, or close() was called
        self._closing = threading.Event()
        self._keeper: threading.Thread | None = None

    @property
    def up(self) -> bool:
        return self._reach.up

    def describe(self) -> str:
        c = self.config
        return f"modbus {c.host}:{c.port} unit {c.unit} coil {c.coil}"

    def start(self) -> None:
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep_connected, name=f"modbus-{self.lane}", daemon=True)
            self._keeper.start()

    def pulse_on(self, command: EjectCommand) -> None:
        self._write(True, command)

    def pulse_off(self, command: EjectCommand) -> None:
        self._write(False, command)

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._keeper is not None:
            self._keeper.join(2 * self.config.timeout_s + 1.0)  # a connect and its first write, each bounded
        with self._io:
            self._client.close()
        self._reach.up = False

    def _write(self, value: bool, command: EjectCommand) -> None:
        """Write the coil; ActuatorError at once while disconnected, and on any failure (the adapter then goes down)."""
        what = f"lane {self.lane}: coil {self.config.coil} {'on' if value else 'off'} (camera {command.camera_id})"
        try:
            with self._io:
                # Without a socket the client would connect here, blocking the lane; the keeper thread does that.
                if not self._reach.up or self._client.socket is None:
                    raise ActuatorError(f"{what}: PLC {self.config.host}:{self.config.port} is not connected "
                                        "(reconnecting in the background)")
                response = self._client.write_coil(self.config.coil, value, device_id=self.config.unit)
        except (ModbusException, OSError, ValueError) as exc:  # ValueError: select() on a socket closed meanwhile
            self._went_down(str(exc) or type(exc).__name__)
            raise ActuatorError(f"{what}: {exc}") from None
        if response.isError():
            # The PLC answered, so the connection stays up; an exception code here means the line file is wrong.
            raise ActuatorError(f"{what}: the PLC refused the write (Modbus exception code "
                                f"{getattr(response, 'exception_code', '?')}); check unit and coil in the line file")

    def _keep_connected(self) -> None:
        delay = self._reconnect_min_s
        while not self._closing.is_set():
            if self._reach.up:
                self._wake.wait(_PROBE_S)
                self._wake.clear()
                if self._reach.up and not self._closing.is_set() and self._closed_by_plc():
                    self._went_down("the PLC closed the connection")
                delay = self._reconnect_min_s  # a lost connection is retried at once, then with backoff
                continue
            failure = self._connect()
            if failure is None:
                self._reach.mark(True)
                continue
            self._reach.mark(False, failure)
            self._closing.wait(delay)
            delay = min(delay * 2, self._reconnect_max_s)

    def _connect(self) -> str | None:
        """Open a fresh connection and switch the coil off (it may have been left on); the failure, or None."""
        try:
            # Our own connect, not the client's: pymodbus logs every refused connect at ERROR, once per retry.
            sock = socket.create_connection((self.config.host, self.config.port), timeout=self.config.timeout_s)
        except OSError as exc:
            return str(exc)
        with self._io:
            self._client.close()
            self._client.socket = sock
            try:
                response = self._client.write_coil(self.config.coil, False, device_id=self.config.unit)
            except (ModbusException, OSError, ValueError) as exc:
                self._client.close()
                return f"connected, but the PLC did not answer: {exc}"
            if response.isError():
                self._client.close()
                return (f"the PLC refused coil {self.config.coil} of unit {self.config.unit} (Modbus exception code "
                        f"{getattr(response, 'exception_code', '?')}); check the line file")
        return None

    def _closed_by_plc(self) -> bool:
        """True when the idle connection has been closed or reset by the PLC (checked without blocking)."""
        with self._io:
            sock = self._client.socket
            if sock is None:
                return True
            try:
                readable, _, _ = select.select([sock], [], [], 0)
                return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
            except (OSError, ValueError):
                return True

    def _went_down(self, reason: str) -> None:
        with self._io:
            self._client.close()
        self._reach.mark(False, reason)
        self._wake.set()
