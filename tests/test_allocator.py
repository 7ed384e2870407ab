"""keep_freed_memory: a freed large block is reused by the next one instead of being faulted in again (glibc),
in the main thread and in threads started afterwards (the app answers requests in worker threads)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from textsam.allocator import ENV, keep_freed_memory

CHILD = """
import resource, sys, threading
import torch
from textsam.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
def work():
    for _ in range(14):  # glibc reuses same-size blocks once its per-size cache of small chunks is full
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MB: over glibc's largest mmap threshold
        block.fill_(1)  # touch every page
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del block
if sys.argv[2] == "thread":
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
else:
    work()
print(applied, faults[-1])
"""


def _child(mode: str, where: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, where], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}, timeout=120).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_memory_is_reused_instead_of_faulted_in_again(where: str) -> None:
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    applied, faults = _child("keep", where)
    assert applied and faults < pages // 20  # the 14th 64 MB block reuses earlier pages
    applied, faults = _child("default", where)
    assert not applied and faults > pages // 2  # glibc's own settings map (and fault in) every block afresh
    applied, faults = _child("keep", where, {ENV: "0"})
    assert not applied and faults > pages // 2  # the environment opts out


def test_keep_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        keep_freed_memory(0)
