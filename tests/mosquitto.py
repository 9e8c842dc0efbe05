"""A real Mosquitto broker (Debian's `mosquitto`) on a loopback port, with its own temporary config, for MQTT tests.

    with running_mosquitto() as (host, port): ...          # a broker for the block
    with Mosquitto() as broker: broker.stop(); broker.start()   # lost and back, on the same port
    broker.pause(); broker.resume()                             # hung (SIGSTOP) and answering again
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from inspector.kafka.local_broker import free_port

MOSQUITTO = Path("/usr/sbin/mosquitto")
MISSING = f"{MOSQUITTO} is absent: install Debian's mosquitto package (apt-get install mosquitto)"
needs_mosquitto = pytest.mark.skipif(not MOSQUITTO.exists(), reason=MISSING)

_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
"""


class Mosquitto:
    """One broker process; `stop()` and `start()` may alternate, on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.work_dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.config_file = self.work_dir / "mosquitto.conf"
        self.config_file.write_text(_CONFIG.format(port=self.port))
        self.log_file = self.work_dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        """Run the broker and return once it accepts connections; skips the test when mosquitto is absent."""
        if not MOSQUITTO.exists():
            pytest.skip(MISSING)
        if self._proc is not None:
            return self
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.config_file)], stdout=log,
                                          stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        tail = self.log_file.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port}:\n{tail}")

    def stop(self) -> None:
        """Terminate the broker (it closes every client connection) and wait until it is gone."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused broker would not act on SIGTERM
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered, like a hung broker."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()


@contextmanager
def running_mosquitto(port: int | None = None) -> Iterator[tuple[str, int]]:
    """A broker for the block, as (host, port)."""
    with Mosquitto(port) as broker:
        yield broker.host, broker.port
