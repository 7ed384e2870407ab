"""keep_freed_memory: a freed large block is reused by the next one instead of being faulted in again (glibc)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from textsam.allocator import ENV, keep_freed_memory

CHILD = """
import resource, sys
import torch
from textsam.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(12):  # glibc reuses same-size blocks once its per-size cache of small chunks is full (7)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MB: over glibc's largest mmap threshold
    block.fill_(1)  # touch every page
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
print(applied, faults[-1])
"""


def _child(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}, timeout=120).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    applied, faults = _child("keep")
    assert applied and faults < pages // 20  # the 12th 64 MB block reuses earlier pages
    applied, faults = _child("default")
    assert not applied and faults > pages // 2  # glibc's own settings map (and fault in) every block afresh
    applied, faults = _child("keep", {ENV: "0"})
    assert not applied and faults > pages // 2  # the environment opts out


def test_keep_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        keep_freed_memory(0)
