"""Process-wide choices made before torch starts: large tensors on huge pages, where the kernel offers them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
