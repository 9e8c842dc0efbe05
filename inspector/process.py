"""Process-wide runtime choices, made once at an entry point (the environment-based ones, OpenMP's waiting
policy and huge pages for tensors, live with the settings: `settings.prepare_torch_runtime`)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


def configure_logging(level: str, process_tag: str = "") -> None:
    """Log lines at `level` (Settings.log_level) and up to stderr, with time, level and logger name, after
    `process_tag` when several processes share the log (e.g. "[worker 2]")."""
    tag = f"{process_tag} " if process_tag else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
    # kafka-python logs every refused connection while it retries; what matters reaches us as an exception.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def shorten_gil_switch_interval() -> None:
    """Threads that take the GIL back between C calls (decode, nvJPEG, the Kafka clients' threads) wait behind
    a main thread busy in Python for up to the switch interval each time, 5 ms by default: 20 such steps took
    260 ms at 5 ms and 22 ms at 0.5 ms in a side thread (measured on cpu-2)."""
    sys.setswitchinterval(0.0005)


def freeze_long_lived_objects() -> None:
    """Take everything allocated so far out of the garbage collector's walks.

    With torch loaded a process holds ~370k objects that live as long as it does (torch, the model, the
    clients). Each full collection walked all of them: 215 ms on cpu-2, a stall that was the whole end-to-end
    p99 tail of a worker, and of the processes measuring it. Frozen, a full collection takes 0.1 ms.
    Call `gc.unfreeze()` before exit so that shutdown collects them (frozen objects trip some leak checks).
    """
    gc.collect()
    gc.freeze()


def raise_scheduling_priority(nice: int, who: str) -> int:
    """Lower this thread's nice value to `nice` (never raise it), before any other thread starts: Linux keeps a
    nice value per thread and new threads take their creator's. Going below 0 needs CAP_SYS_NICE or a nice
    rlimit; without them the process runs on at its own and says so. -> the nice value in effect."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice >= current:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        log.warning("%s stays at nice %d: nice %d needs CAP_SYS_NICE or a nice rlimit of %d (ulimit -e)", who,
                    current, nice, 20 - nice)
        return current
    return nice


def stop_on_signals(stop: Callable[[], None], stopping: str) -> None:
    """Call `stop` on SIGTERM (a service manager's or compose's stop) and SIGINT (Ctrl-C), logging the signal and
    what stopping means for this program (`stopping`). Call from the main thread."""
    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: %s", signum, stopping)
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
