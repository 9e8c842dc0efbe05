"""Process-wide choices made at an entry point: large tensors on huge pages, where the kernel offers them; the
sorter's scheduling priority, where the process may raise it."""

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from inspector.process import raise_scheduling_priority

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# Allocates, touches and frees a 64 MiB tensor 6 times; prints the page faults of the last 5 and the tensor's pages.
_ROUNDS = """
import resource, sys
if sys.argv[1] == "prepared":
    from inspector.settings import prepare_torch_runtime
    prepare_torch_runtime()
import torch
size = 64 << 20
torch.ones(size, dtype=torch.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(size, dtype=torch.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, size // 4096)
"""


def _faults(mode: str) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}  # conftest set it for this process
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True,
                         env=env).stdout
    faults, pages = out.split()
    return int(faults), int(pages)


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="the kernel offers no huge pages")
def test_large_tensors_fault_in_huge_pages_once_prepared():
    faults, pages = _faults("bare")
    assert faults > 4 * pages  # torch's default: a page fault per 4 KiB of every fresh 64 MiB tensor
    faults, pages = _faults("prepared")
    assert faults < pages // 2  # 5 rounds: about 30x fewer here (some 4 KiB pages where no huge page was free)


def _in_a_thread(call):
    """Run `call` in a thread of its own and return what it returned: a nice value belongs to the thread."""
    out = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()
    thread.join()
    return out[0]


def test_scheduling_priority_is_never_lowered():
    def ask_for_less():
        current = os.getpriority(os.PRIO_PROCESS, 0)
        return current, raise_scheduling_priority(min(current + 3, 19), "the test"), os.getpriority(os.PRIO_PROCESS, 0)

    current, returned, after = _in_a_thread(ask_for_less)
    assert returned == after == current


def test_scheduling_priority_raised_where_permitted_and_inherited_by_new_threads():
    def raise_then_spawn():
        current = os.getpriority(os.PRIO_PROCESS, 0)
        returned = raise_scheduling_priority(current - 2, "the test")
        return current, returned, os.getpriority(os.PRIO_PROCESS, 0), _in_a_thread(
            lambda: os.getpriority(os.PRIO_PROCESS, 0))

    current, returned, after, child = _in_a_thread(raise_then_spawn)
    if returned == current:
        pytest.skip("this process may not raise its priority (no CAP_SYS_NICE, no nice rlimit)")
    assert returned == after == child == current - 2


def test_scheduling_priority_refused_leaves_it_and_says_why(monkeypatch, caplog):
    def refuse(*_args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    def ask_for_more():
        current = os.getpriority(os.PRIO_PROCESS, 0)
        return current, raise_scheduling_priority(current - 5, "the sorter")

    with caplog.at_level(logging.WARNING, logger="inspector.process"):
        current, returned = _in_a_thread(ask_for_more)
    assert returned == current
    assert [r.getMessage() for r in caplog.records] == [
        f"the sorter stays at nice {current}: nice {current - 5} needs CAP_SYS_NICE or a nice rlimit of "
        f"{25 - current} (ulimit -e)"]
