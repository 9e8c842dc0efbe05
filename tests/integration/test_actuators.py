"""The ejector adapters against real servers: a Modbus TCP stand-in PLC (pymodbus) and a Mosquitto broker.

No Kafka: each test starts its own server on a free loopback port, and stops and restarts it on the same port to
show the adapter failing fast while it is gone and reconnecting by itself when it is back.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from inspector.errors import ActuatorError, ConfigError
from inspector.kafka.local_broker import free_port
from inspector.settings import SorterSettings
from inspector.sorter.actuators import Actuator, EjectCommand, build_actuator
from inspector.sorter.line_file import ModbusConfig, MqttConfig
from inspector.sorter.mqtt import ACK_TIMEOUT_S
from inspector.sorter.standin_plc import StandinPlc
from tests.mosquitto import Mosquitto, needs_mosquitto

SETTINGS = SorterSettings(reconnect_min_s=0.1, reconnect_max_s=0.5)
PULSE_S = 0.04
# Both ends stamp with time.time_ns() in this process; the slack covers scheduling on a loaded 2-core machine.
TOLERANCE_NS = 25_000_000
FAIL_FAST_S = 1.0  # an unreachable ejector must fail a command within this
RECONNECT_S = 8.0


def _command(lane: str = "lane-1") -> EjectCommand:
    now = time.time_ns()
    return EjectCommand(lane=lane, camera_id="cam-1", fire_ns=now + 50_000_000, arrival_ns=now + 65_000_000,
                        pulse_ms=PULSE_S * 1000, frame_ids=("cam-1:41", "cam-1:42"))


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _fails_fast(actuator: Actuator) -> float:
    """Seconds pulse_on took to raise ActuatorError."""
    t0 = time.monotonic()
    with pytest.raises(ActuatorError):
        actuator.pulse_on(_command())
    return time.monotonic() - t0


# --- Modbus TCP -------------------------------------------------------------------------------------------------


@pytest.fixture
def plc() -> Iterator[StandinPlc]:
    standin = StandinPlc().start()
    yield standin
    standin.stop()


def _modbus(port: int, coil: int = 3) -> Actuator:
    config = ModbusConfig(protocol="modbus", host="127.0.0.1", port=port, unit=1, coil=coil, timeout_s=0.5)
    return build_actuator("lane-1", config, SETTINGS)


def _pulse(actuator: Actuator) -> tuple[int, int]:
    """One pulse as the scheduler fires it; the wall-clock times pulse_on and pulse_off were called."""
    command = _command()
    on_ns = time.time_ns()
    actuator.pulse_on(command)
    time.sleep(PULSE_S)
    off_ns = time.time_ns()
    actuator.pulse_off(command)
    return on_ns, off_ns


def test_a_modbus_pulse_reaches_the_plc_on_time(plc: StandinPlc) -> None:
    actuator = _modbus(plc.port, coil=3)
    actuator.start()
    try:
        assert _wait_for(lambda: actuator.up, 5.0), "the actuator never connected to the stand-in PLC"
        on_ns, off_ns = _pulse(actuator)
    finally:
        actuator.close()
    pulses = plc.pulses(coil=3)
    assert len(pulses) == 1, plc.writes()
    assert pulses[0].off_ns is not None
    assert abs(pulses[0].on_ns - on_ns) < TOLERANCE_NS
    assert abs(pulses[0].off_ns - off_ns) < TOLERANCE_NS
    assert plc.pulses(coil=0) == [] and not plc.coil(3)


def test_a_lost_plc_fails_commands_fast_and_is_reconnected_when_back(plc: StandinPlc) -> None:
    actuator = _modbus(plc.port)
    actuator.start()
    try:
        assert _wait_for(lambda: actuator.up, 5.0)
        plc.stop()
        assert _fails_fast(actuator) < FAIL_FAST_S
        assert not actuator.up
        assert _fails_fast(actuator) < 0.05, "a command while down must not wait for the PLC"
        plc.start()  # same port
        assert _wait_for(lambda: actuator.up, RECONNECT_S), "the actuator did not reconnect to the restarted PLC"
        on_ns, _ = _pulse(actuator)
    finally:
        actuator.close()
    assert [abs(p.on_ns - on_ns) < TOLERANCE_NS for p in plc.pulses()] == [True]


def test_an_unreachable_plc_at_start_does_not_raise_and_is_connected_once_it_listens() -> None:
    port = free_port()
    actuator = _modbus(port)
    actuator.start()
    try:
        assert not actuator.up
        assert _fails_fast(actuator) < 0.05
        with StandinPlc(port=port) as late_plc:
            assert _wait_for(lambda: actuator.up, RECONNECT_S)
            _pulse(actuator)
            assert len(late_plc.pulses()) == 1
    finally:
        t0 = time.monotonic()
        actuator.close()
        assert time.monotonic() - t0 < 2.0


def test_the_standin_plc_reports_a_port_in_use(plc: StandinPlc) -> None:
    with pytest.raises(ConfigError, match="could not listen"):
        StandinPlc(port=plc.port).start()


# --- MQTT -------------------------------------------------------------------------------------------------------

TOPIC = "line/lane-2/eject"


class Subscriber:
    """A paho client on the lane's topic (QoS 1) that subscribes again after every reconnect."""

    def __init__(self, host: str, port: int) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.subscribed = False
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-subscriber")
        self._client.on_connect = lambda client, *_: client.subscribe(TOPIC, qos=1)
        self._client.on_subscribe = lambda *_: setattr(self, "subscribed", True)
        self._client.on_disconnect = lambda *_: setattr(self, "subscribed", False)
        self._client.on_message = lambda _c, _u, msg: self.messages.put(json.loads(msg.payload))
        self._client.reconnect_delay_set(1, 1)
        self._client.connect_async(host, port)
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as running:
        yield running


@pytest.fixture
def subscriber(broker: Mosquitto) -> Iterator[Subscriber]:
    client = Subscriber(broker.host, broker.port)
    assert _wait_for(lambda: client.subscribed, 5.0)
    yield client
    client.close()


def _mqtt(port: int) -> Actuator:
    config = MqttConfig(protocol="mqtt", host="127.0.0.1", port=port, topic=TOPIC, qos=1)
    return build_actuator("lane-2", config, SETTINGS)


@needs_mosquitto
def test_an_mqtt_command_reaches_a_subscriber(broker: Mosquitto, subscriber: Subscriber) -> None:
    actuator = _mqtt(broker.port)
    actuator.start()
    try:
        assert _wait_for(lambda: actuator.up, 5.0), "the actuator never connected to mosquitto"
        command = _command("lane-2")
        t0 = time.time_ns()
        actuator.pulse_on(command)  # returns after the broker's PUBACK
        t1 = time.time_ns()
        actuator.pulse_off(command)
        received = subscriber.messages.get(timeout=5.0)
    finally:
        actuator.close()
    assert received == {"kind": "eject", "lane": "lane-2", "camera_id": "cam-1", "fire_ns": command.fire_ns,
                        "arrival_ns": command.arrival_ns, "pulse_ms": PULSE_S * 1000,
                        "frame_ids": ["cam-1:41", "cam-1:42"], "sent_ns": received["sent_ns"]}
    assert t0 <= received["sent_ns"] <= t1
    assert (t1 - t0) / 1e9 < 0.25
    time.sleep(0.2)
    assert subscriber.messages.empty(), "pulse_off must publish nothing"


@needs_mosquitto
def test_a_lost_broker_fails_commands_fast_and_is_reconnected_when_back(broker: Mosquitto,
                                                                        subscriber: Subscriber) -> None:
    actuator = _mqtt(broker.port)
    actuator.start()
    try:
        assert _wait_for(lambda: actuator.up, 5.0)
        broker.stop()
        assert _fails_fast(actuator) < FAIL_FAST_S
        assert _wait_for(lambda: not actuator.up, 2.0)
        assert _fails_fast(actuator) < 0.05
        broker.start()  # same port
        assert _wait_for(lambda: actuator.up, RECONNECT_S), "the actuator did not reconnect to mosquitto"
        assert _wait_for(lambda: subscriber.subscribed, RECONNECT_S)
        command = _command("lane-2")
        actuator.pulse_on(command)
        # A command that failed while the broker went away may come first (at least once; receivers drop it by fire_ns).
        assert _wait_for(lambda: subscriber.messages.get(timeout=5.0)["fire_ns"] == command.fire_ns, 5.0)
    finally:
        actuator.close()


@needs_mosquitto
def test_a_hung_broker_fails_a_command_within_the_ack_timeout(broker: Mosquitto, subscriber: Subscriber) -> None:
    actuator = _mqtt(broker.port)
    actuator.start()
    try:
        assert _wait_for(lambda: actuator.up, 5.0)
        broker.pause()
        took_s = _fails_fast(actuator)
        assert ACK_TIMEOUT_S <= took_s < ACK_TIMEOUT_S + 0.25, took_s
        assert not actuator.up
        broker.resume()  # its late acknowledgement shows the link works again
        assert _wait_for(lambda: actuator.up, 5.0)
        command = _command("lane-2")
        actuator.pulse_on(command)
        assert _wait_for(lambda: subscriber.messages.get(timeout=5.0)["fire_ns"] == command.fire_ns, 5.0)
    finally:
        actuator.close()


def test_the_standin_plc_command_logs_each_coil_change_and_stops_on_sigterm() -> None:
    port = free_port()
    code = ("import logging, sys; from inspector.sorter.standin_plc import run_standin_plc; "
            "logging.basicConfig(level='INFO', format='%(message)s'); "
            f"sys.exit(run_standin_plc('127.0.0.1', {port}))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        actuator = _modbus(port, coil=2)
        actuator.start()
        try:
            assert _wait_for(lambda: actuator.up, 20.0), "the stand-in PLC command never listened"
            _pulse(actuator)
        finally:
            actuator.close()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert re.search(r"coil 2 on at \S+\n", output), output
    assert re.search(r"coil 2 off at \S+ \(on for \d+\.\d ms\)", output), output
