"""Where a benchmark's CPU went: a process's CPU seconds, the processes it started, and the machine's shares
(workers, broker, benchmark, other, idle, steal) sampled while a run lasts (Linux /proc)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, and theirs (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


class CpuShares:
    """Where the machine's CPU went, in % of one core: the workers, the broker, this benchmark process, everything
    else, idle, and time the hypervisor gave to other guests (steal). Sampled every 0.1 s in a thread, so that a
    drain's share covers the drain alone (between its first and last score), not its start-up or tail."""

    def __init__(self, workers: list[int], broker: int | None) -> None:
        self.pids = {"workers": workers, "broker": [broker] if broker else [], "benchmark": [os.getpid()]}
        self.samples: list[tuple[int, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> CpuShares:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample_until_stopped(self) -> None:
        while True:
            # /proc/stat "cpu": user nice system idle iowait irq softirq steal (clock ticks, all cores together)
            tck = os.sysconf("SC_CLK_TCK")
            v = [int(x) / tck for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            counters = {"busy": v[0] + v[1] + v[2] + v[5] + v[6], "idle": v[3] + v[4], "steal": v[7]}  # CPU seconds
            counters.update({k: sum(cpu_seconds(p) for p in pids) for k, pids in self.pids.items()})
            self.samples.append((time.time_ns(), counters))
            if self._stop.wait(0.1):
                return

    def shares(self, from_ns: int, to_ns: int) -> dict[str, float]:
        inside = [c for t, c in self.samples if from_ns <= t <= to_ns] or [c for _, c in self.samples[-2:]]
        a, b = inside[0], inside[-1]
        d = {k: b[k] - a[k] for k in a}
        total = (d["busy"] + d["idle"] + d["steal"]) / (os.cpu_count() or 1) / 100  # CPU seconds per 1 % of one core
        if total <= 0:
            return {}
        shares = {k: d[k] / total for k in (*self.pids, "idle", "steal")}
        shares["other"] = d["busy"] / total - sum(shares[k] for k in self.pids)
        return {k: round(v, 1) for k, v in shares.items()}
