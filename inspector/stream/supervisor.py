"""`inspector serve --processes N`: N worker processes on one host, each today's `serve()` as one member of the
consumer group with its own model and CUDA context, behind one HTTP endpoint.

A worker process is bound by its Python and its Kafka client long before the GPU is (README, "Deploy"), so a GPU
host runs several. They share the GPU in time slices, or side by side where the host runs the CUDA MPS daemon
(nothing to set here: a process started on such a host uses it). A worker that exits or is killed is started
again after an exponential back-off; SIGTERM/SIGINT stop every worker gracefully (each finishes and commits the
batches in hand), then the supervisor exits 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from prometheus_client import CollectorRegistry

from inspector.errors import ConfigError, InspectorError
from inspector.http_endpoint import HttpEndpoint
from inspector.process import configure_logging, stop_on_signals
from inspector.settings import Settings
from inspector.stream.metrics import WorkerScrapes, build_supervisor_metrics

log = logging.getLogger(__name__)

MAX_AUTO_PROCESSES = 8
_TEND_INTERVAL_S = 0.2  # how often the supervisor looks for dead workers and reports


def processes_for_host(cores: int, cuda: bool) -> int:
    """How many worker processes `workers.processes=0` runs on a host with `cores` usable cores."""
    # On the CPU one worker already keeps every core busy (model.cpu_streams); on a GPU a worker needs about a core
    # for its Python and one for its Kafka client and decode threads, and 8 of them cover the GPU, which one worker
    # fills to about a seventh (bench/RESULTS.md, "GPU — h200" against "Pipeline through a real Kafka broker").
    if not cuda:
        return 1
    return max(1, min(MAX_AUTO_PROCESSES, cores // 2))


def worker_processes(settings: Settings) -> int:
    """workers.processes, or for 0 the number `processes_for_host` picks for this host's cores and device."""
    if settings.workers.processes:
        return settings.workers.processes
    from inspector.model.runtime import pick_device  # imports torch, needed only to look for the GPU

    cuda = pick_device(settings.model.device).type == "cuda"
    return processes_for_host(len(os.sched_getaffinity(0)), cuda)


def worker_settings(settings: Settings, index: int, supervisor_pid: int) -> Settings:
    """Worker `index`'s copy of the settings: its endpoint on a free loopback port (the supervisor serves its metrics
    and health), and with exactly-once a transactional id of its own, kept across restarts so that a restarted
    worker fences its killed predecessor's open transaction at once."""
    kafka = settings.kafka
    if kafka.exactly_once:
        base = kafka.effective_transactional_id(pid=supervisor_pid)
        kafka = kafka.model_copy(update={"transactional_id": f"{base}-{index}"})
    http = settings.http.model_copy(update={"host": "127.0.0.1", "port": 0})
    return settings.model_copy(update={"kafka": kafka, "http": http})


def run_worker_process(settings: Settings, index: int, reports: Connection) -> None:
    """A worker process's life, as the supervisor spawns it: `serve()`, reporting its HTTP port and a ConfigError
    through `reports`; the exit code is serve's, or 2 after an error."""
    configure_logging(settings.log_level, f"[worker {index}]")
    threading.Thread(target=_stop_when_orphaned, name="supervisor-watch", daemon=True).start()
    from inspector.stream.serve import serve  # imports torch, which the supervisor itself never needs

    try:
        code = serve(settings, on_listening=lambda port: reports.send(("port", port)))
    except ConfigError as exc:
        reports.send(("config_error", str(exc)))
        sys.exit(2)
    except InspectorError as exc:
        log.error("%s", exc)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group, perhaps before serve() handles it
        sys.exit(130)
    sys.exit(code)


def _stop_when_orphaned() -> None:
    """Stop this worker gracefully once its supervisor is gone, even SIGKILLed: no orphan stays in the group."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


@dataclass
class _WorkerSlot:
    """One worker's place: the process in it now, where it listens, and its restart back-off."""

    index: int
    process: BaseProcess | None = None
    reports: Connection | None = None  # ("port", int) or ("config_error", str) from the process
    port: int | None = None
    config_error: str | None = None
    starts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    failures: int = 0  # deaths in a row, each within restart_max_s of its start: the back-off's exponent


class Supervisor:
    """Starts `processes` workers, restarts those that die, and serves their metrics and health as one endpoint."""

    def __init__(self, settings: Settings, processes: int, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = build_supervisor_metrics(self.registry, processes)
        self.registry.register(WorkerScrapes(self.scrape_workers))
        self._slots = [_WorkerSlot(index) for index in range(processes)]
        self._stop = threading.Event()
        # A fresh interpreter per worker: CUDA cannot be used across fork(), and no supervisor thread or lock leaks in.
        self._context = multiprocessing.get_context("spawn")

    def stop(self) -> None:
        """Ask run() to stop every worker and return (signal-safe)."""
        self._stop.set()

    def run(self) -> int:
        """Serve the endpoint, start the workers and keep them running until SIGTERM/SIGINT; returns the exit code."""
        endpoint = HttpEndpoint(self.settings.http.host, self.settings.http.port, self.registry,
                                ready=self.ready).start()
        log.info("%d worker processes; their metrics and health on http://%s/metrics", len(self._slots),
                 endpoint.address)

        stop_on_signals(self.stop, "stopping the workers")
        try:
            for slot in self._slots:
                self._start(slot)
            while not self._stop.is_set():
                self._tend()
                self._stop.wait(_TEND_INTERVAL_S)
        finally:
            self._stop_workers()
            endpoint.close()
        log.info("stopped cleanly")
        return 0

    # ---- health and metrics (called on the endpoint's threads) -------------------------------------

    def ready(self) -> bool:
        """Ready when every worker is: one that is down or rejoining leaves its share of the partitions unserved,
        which a load balancer or an operator should see, while /healthz stays 200 so the healthy ones live on."""
        ports = [slot.port for slot in self._slots]
        if any(port is None for port in ports):
            return False
        return all(status == 200 for status, _ in self._get_from_workers("/readyz").values())

    def scrape_workers(self) -> dict[str, str]:
        """Worker index -> its /metrics text, for the workers that answered."""
        return {index: body.decode() for index, (status, body) in self._get_from_workers("/metrics").items()
                if status == 200}

    def _get_from_workers(self, path: str) -> dict[str, tuple[int, bytes]]:
        ports = {str(slot.index): slot.port for slot in self._slots if slot.port is not None}
        if not ports:
            return {}
        with ThreadPoolExecutor(len(ports)) as pool:  # side by side: one slow worker does not add up
            replies = {index: pool.submit(_get, port, path) for index, port in ports.items()}
            return {index: reply for index, future in replies.items() if (reply := future.result()) is not None}

    # ---- the workers' lives ------------------------------------------------------------------------

    def _start(self, slot: _WorkerSlot) -> None:
        reports, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=run_worker_process, name=f"inspector-worker-{slot.index}",
                                        args=(worker_settings(self.settings, slot.index, os.getpid()), slot.index,
                                              writer))
        try:
            process.start()
        except OSError:
            reports.close()
            raise
        finally:
            writer.close()  # the worker holds the only writing end: its exit ends the pipe
        if slot.starts:
            self.metrics.restarts.labels(str(slot.index)).inc()
        slot.process, slot.reports, slot.port, slot.config_error = process, reports, None, None
        slot.starts += 1
        slot.started_at = time.monotonic()
        slot.restart_at = None
        self.metrics.pid.labels(str(slot.index)).set(process.pid or 0)
        log.info("worker %d started (pid %s)", slot.index, process.pid)

    def _tend(self) -> None:
        """Read the workers' reports, schedule a restart for each worker that died, start those that are due."""
        now = time.monotonic()
        for slot in self._slots:
            self._read_reports(slot)
            if slot.process is not None and not slot.process.is_alive():
                self._bury(slot, slot.process, now)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                try:
                    self._start(slot)
                except OSError as exc:  # out of processes or memory for now: try again after the longest wait
                    slot.restart_at = now + self.settings.workers.restart_max_s
                    log.error("cannot start worker %d (%s); trying again in %.0fs", slot.index, exc,
                              self.settings.workers.restart_max_s)
        self.metrics.alive.set(sum(slot.process is not None and slot.process.is_alive() for slot in self._slots))

    def _read_reports(self, slot: _WorkerSlot) -> None:
        try:
            while slot.reports is not None and slot.reports.poll():
                kind, value = slot.reports.recv()
                if kind == "port":
                    slot.port = value
                elif kind == "config_error":
                    slot.config_error = value
        except (EOFError, OSError):  # the worker exited: nothing more will come
            if slot.reports is not None:
                slot.reports.close()
            slot.reports = None

    def _bury(self, slot: _WorkerSlot, process: BaseProcess, now: float) -> None:
        """The slot's process died: a ConfigError at its first start stops everything (no restart could help),
        anything else is restarted after a back-off that doubles while it keeps dying young."""
        self._read_reports(slot)  # a ConfigError sent just before it exited
        pid, exitcode = process.pid, process.exitcode
        process.close()
        slot.process, slot.port = None, None
        self.metrics.pid.labels(str(slot.index)).set(0)
        if slot.config_error is not None and slot.starts == 1:
            raise ConfigError(slot.config_error)
        workers = self.settings.workers
        lived_s = now - slot.started_at
        slot.failures = slot.failures + 1 if lived_s < workers.restart_max_s else 1
        delay_s = min(workers.restart_max_s, workers.restart_min_s * 2 ** min(slot.failures - 1, 30))
        slot.restart_at = now + delay_s
        reason = f": {slot.config_error}" if slot.config_error else ""
        log.warning("worker %d (pid %s) %s after %.1fs%s; restarting it in %.1fs", slot.index, pid,
                    _exit_description(exitcode), lived_s, reason, delay_s)

    def _stop_workers(self) -> None:
        """SIGTERM every worker, give them workers.stop_timeout_s to finish their batches, then SIGKILL the rest."""
        running = [slot.process for slot in self._slots if slot.process is not None and slot.process.is_alive()]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self.settings.workers.stop_timeout_s
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in running:
            if process.is_alive():
                log.warning("worker pid %s did not stop within %.0fs: killing it", process.pid,
                            self.settings.workers.stop_timeout_s)
                process.kill()
                process.join()
        for slot in self._slots:
            if slot.process is not None:
                log.info("worker %d %s", slot.index, _exit_description(slot.process.exitcode))
        self.metrics.alive.set(0)


def _get(port: int, path: str) -> tuple[int, bytes] | None:
    """(status, body) of a worker's endpoint, or None when it does not answer (starting, stopping or stuck)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return None
