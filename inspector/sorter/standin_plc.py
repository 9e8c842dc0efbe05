"""A stand-in PLC: a real Modbus TCP server (pymodbus) that records every coil write with its wall-clock time.

It takes the place of the line's PLC in the tests, the demo, the benchmark and the compose stack
(`inspector standin-plc --host 0.0.0.0 --port 502`), where it logs one line per coil change.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from inspector.errors import ConfigError
from inspector.process import stop_on_signals

log = logging.getLogger(__name__)

COIL_COUNT = 65536  # every coil address a Modbus request can name
_WRITE_COIL, _WRITE_COILS = 5, 15  # Modbus function codes
_START_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CoilWrite:
    """One coil written by a client, stamped when the server handled it."""

    at_ns: int  # time.time_ns()
    coil: int
    value: bool


@dataclass(frozen=True)
class Pulse:
    """A coil's rising edge and the falling edge after it (None while the coil is still on)."""

    coil: int
    on_ns: int
    off_ns: int | None

    @property
    def width_ms(self) -> float | None:
        return None if self.off_ns is None else (self.off_ns - self.on_ns) / 1e6


def pair_pulses(writes: Iterable[CoilWrite], coil: int | None = None) -> list[Pulse]:
    """The pulses in `writes` (in time order), of one coil or of all; a write that repeats a coil's value is no edge."""
    state: dict[int, bool] = {}
    open_on: dict[int, int] = {}
    done: list[Pulse] = []
    for write in writes:
        if coil is not None and write.coil != coil:
            continue
        if write.value == state.get(write.coil, False):
            continue
        state[write.coil] = write.value
        if write.value:
            open_on[write.coil] = write.at_ns
        else:
            done.append(Pulse(write.coil, open_on.pop(write.coil), write.at_ns))
    done.extend(Pulse(c, on_ns, None) for c, on_ns in open_on.items())
    return sorted(done, key=lambda p: (p.on_ns, p.coil))


class StandinPlc:
    """A Modbus TCP server on its own thread and event loop; `start()` and `stop()` may alternate (same port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 on_change: Callable[[CoilWrite], None] | None = None) -> None:
        self.host = host
        self.port = port  # 0 until start() has bound a free one
        self._on_change = on_change  # called (on the server's thread) when a coil changes value
        self._writes: list[CoilWrite] = []
        self._coils: dict[int, bool] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusTcpServer | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> StandinPlc:
        """Listen, and return once connections are accepted; ConfigError when the address cannot be bound."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        listening = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(target=self._serve, args=(loop, listening, failure), name="standin-plc",
                                  daemon=True)
        thread.start()
        if not listening.wait(_START_TIMEOUT_S) or failure:
            thread.join(_START_TIMEOUT_S)
            reason = f": {failure[0]}" if failure else " in time"
            raise ConfigError(f"stand-in PLC could not listen on {self.address}{reason}")
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Close the listener and every client connection, and release the port."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_START_TIMEOUT_S)
        # The coils of a restarted PLC start off.
        with self._lock:
            self._coils.clear()

    def __enter__(self) -> StandinPlc:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def writes(self) -> list[CoilWrite]:
        """Every coil write so far, across restarts, in the order handled."""
        with self._lock:
            return list(self._writes)

    def pulses(self, coil: int | None = None) -> list[Pulse]:
        """The pulses written so far, of one coil or of all."""
        return pair_pulses(self.writes(), coil)

    def coil(self, coil: int) -> bool:
        """A coil's value now."""
        with self._lock:
            return self._coils.get(coil, False)

    def _serve(self, loop: asyncio.AbstractEventLoop, listening: threading.Event,
               failure: list[BaseException]) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except (OSError, RuntimeError) as exc:  # pymodbus reports a port it cannot bind as RuntimeError
            failure.append(exc)
            listening.set()
            loop.close()
            return
        listening.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        # Separate blocks (coils, discrete inputs, holding and input registers) address coils one by one; the coils
        # as one list of 16-bit words, since count= is squared by pymodbus 3.15's block check (2.7 s to start).
        device = SimDevice(0, simdata=([SimData(0, values=[0] * (COIL_COUNT // 16), datatype=DataType.BITS)],
                                       [SimData(0, datatype=DataType.BITS)], [SimData(0)], [SimData(0)]),
                           action=self._on_request)
        server = ModbusTcpServer(device, address=(self.host, self.port))
        await server.serve_forever(background=True)
        self._server = server
        listener = server.transport
        if isinstance(listener, asyncio.Server) and listener.sockets:
            self.port = int(listener.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            listener = server.transport
            await server.shutdown()  # closes the listener and every client connection
            if isinstance(listener, asyncio.Server):
                await listener.wait_closed()

    async def _on_request(self, function_code: int, _start: int, address: int, _count: int,
                          _registers: list[int], values: list[int] | list[bool] | None) -> None:
        """Record coil writes before the datastore applies them (reads and register writes pass through)."""
        if values is None or function_code not in (_WRITE_COIL, _WRITE_COILS):
            return
        now = time.time_ns()
        changes = []
        with self._lock:
            for offset, value in enumerate(values):
                write = CoilWrite(now, address + offset, bool(value))
                self._writes.append(write)
                if self._coils.get(write.coil, False) != write.value:
                    self._coils[write.coil] = write.value
                    changes.append(write)
        if self._on_change is not None:
            for write in changes:
                self._on_change(write)


def _log_change(write: CoilWrite, on_since: dict[int, int]) -> None:
    stamp = datetime.fromtimestamp(write.at_ns / 1e9).isoformat(timespec="microseconds")
    if write.value:
        on_since[write.coil] = write.at_ns
        log.info("coil %d on at %s", write.coil, stamp)
    else:
        since = on_since.pop(write.coil, None)
        held = "" if since is None else f" (on for {(write.at_ns - since) / 1e6:.1f} ms)"
        log.info("coil %d off at %s%s", write.coil, stamp, held)


def run_standin_plc(host: str, port: int) -> int:
    """Serve as a stand-in PLC in the foreground until SIGTERM or SIGINT, logging each coil change; the exit code."""
    on_since: dict[int, int] = {}
    stopping = threading.Event()

    stop_on_signals(stopping.set, "stopping")
    plc = StandinPlc(host, port, on_change=lambda write: _log_change(write, on_since))
    plc.start()
    log.info("stand-in PLC listening on %s (Modbus TCP, any unit id, coils 0-%d)", plc.address, COIL_COUNT - 1)
    try:
        # A bounded wait lets the main thread run the signal handler promptly.
        while not stopping.wait(0.5):
            pass
    finally:
        plc.stop()
    log.info("stopped; %d coil writes, %d pulses", len(plc.writes()), len(plc.pulses()))
    return 0
