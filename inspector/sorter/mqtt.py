"""The MQTT ejector: one JSON command per ejection, published to the lane's topic (paho-mqtt, its network thread).

The command, one per `pulse_on` (`pulse_off` sends nothing: the receiver times the pulse itself):

    {"kind": "eject", "lane": "lane-2", "camera_id": "cam-2", "fire_ns": ..., "arrival_ns": ..., "pulse_ms": 40.0,
     "frame_ids": ["..."], "sent_ns": ...}

Times are wall-clock nanoseconds (time.time_ns()). Delivery is at least once: a command whose PUBACK timed out
(the ejection already counted as failed) is resent by paho once the broker is back, so a receiver must drop a
command whose `fire_ns` has passed.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from inspector.errors import ActuatorError
from inspector.settings import SorterSettings
from inspector.sorter.actuators import EjectCommand, Reachability
from inspector.sorter.line_file import MqttConfig

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 0.25  # the longest a QoS 1/2 command may hold the lane's scheduler thread
_KEEPALIVE_S = 5  # a broker that went silent (no RST) is noticed within about 1.5 times this
_CONNECT_TIMEOUT_S = 2.0  # bounds close() while a connect to an unanswering host is in progress


def command_payload(command: EjectCommand, sent_ns: int) -> bytes:
    """The JSON command published for one ejection."""
    return json.dumps({"kind": "eject", "lane": command.lane, "camera_id": command.camera_id,
                       "fire_ns": command.fire_ns, "arrival_ns": command.arrival_ns, "pulse_ms": command.pulse_ms,
                       "frame_ids": list(command.frame_ids), "sent_ns": sent_ns}, separators=(",", ":")).encode()


class MqttCommandActuator:
    """A lane's ejector behind an MQTT broker: `pulse_on` publishes one command and waits briefly for its PUBACK."""

    def __init__(self, lane: str, config: MqttConfig, settings: SorterSettings) -> None:
        self.lane = lane
        self.config = config
        # A unique client id: two sorters (or a restarted one) under one id would keep disconnecting each other.
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"inspector-sorter-{lane}-{uuid.uuid4().hex[:8]}")
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        # paho takes whole seconds, and doubles the wait after each failed try up to the maximum.
        self._reconnect_min_s = max(1, math.ceil(settings.reconnect_min_s))
        self._reconnect_max_s = max(self._reconnect_min_s, math.ceil(settings.reconnect_max_s))
        self._client.reconnect_delay_set(self._reconnect_min_s, self._reconnect_max_s)
        self._reach = Reachability(lane, self.describe, self._reconnect_min_s, self._reconnect_max_s)
        self._client.connect_timeout = _CONNECT_TIMEOUT_S
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._started = False
        self._closing = False  # our own disconnect is no outage to log

    @property
    def up(self) -> bool:
        return self._reach.up

    def describe(self) -> str:
        c = self.config
        return f"mqtt {c.host}:{c.port} topic {c.topic} qos {c.qos}"

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            self._client.connect_async(self.config.host, self.config.port, keepalive=_KEEPALIVE_S)
        except ValueError as exc:  # paho checks host and port here; the line file has checked the port already
            self._reach.mark(False, str(exc))
            return
        self._client.loop_start()

    def pulse_on(self, command: EjectCommand) -> None:
        what = f"lane {self.lane}: eject command (camera {command.camera_id}) to {self.config.topic}"
        if not self._reach.up or not self._client.is_connected():
            raise ActuatorError(f"{what}: broker {self.config.host}:{self.config.port} is not connected "
                                "(reconnecting in the background)")
        try:
            info = self._client.publish(self.config.topic, command_payload(command, time.time_ns()), qos=self.config.qos)
        except ValueError as exc:  # a topic with wildcards, or a payload too large
            raise ActuatorError(f"{what}: {exc}") from None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._reach.mark(False, mqtt.error_string(info.rc))
            raise ActuatorError(f"{what}: {mqtt.error_string(info.rc)}")
        if self.config.qos == 0:
            return
        try:
            info.wait_for_publish(ACK_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:  # the connection was lost meanwhile, or paho's queue is full
            self._reach.mark(False, str(exc))
            raise ActuatorError(f"{what}: {exc}") from None
        if not info.is_published():
            # Down until the broker acknowledges anything again (paho reconnects if the link is dead).
            self._reach.mark(False, f"no acknowledgement within {ACK_TIMEOUT_S * 1000:.0f} ms")
            raise ActuatorError(f"{what}: the broker did not acknowledge within {ACK_TIMEOUT_S * 1000:.0f} ms")

    def pulse_off(self, command: EjectCommand) -> None:
        pass

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        self._closing = True
        self._client.disconnect()  # also ends paho's wait between reconnect tries (within a second)
        self._client.loop_stop()
        self._reach.up = False

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags, reason_code: ReasonCode,
                    _properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._reach.mark(False, f"the broker refused the connection: {reason_code}")
        else:
            self._reach.mark(True)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._reach.mark(False, "cannot connect")

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, _properties: Properties | None) -> None:
        if self._closing:
            self._reach.up = False
            return
        self._reach.mark(False, f"disconnected: {reason_code}")

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, _mid: int, _reason_code: ReasonCode,
                    _properties: Properties) -> None:
        # An acknowledgement (even a late one) shows the link works again after a timed-out command.
        if self.config.qos > 0 and self._client.is_connected():
            self._reach.mark(True)
