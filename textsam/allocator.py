"""Keeping freed memory in the process, so that each image's activations are not faulted in again (glibc).

glibc's ``malloc`` serves every block over its mmap threshold (at most 32 MB) with a fresh ``mmap`` and hands it
back to the kernel when it is freed, and returns the heap's free top past its trim threshold (at most 64 MB). A SAM
encoder's activations are such blocks (ViT-B at 1024: qkv 38 MB, the MLP's hidden 50 MB, the windowed attention's
padded qkv and mask 45 MB, in each of 12 blocks), so every ``set_image`` faults in and zeroes 2-4 GB of new pages:
0.46-1.05 million page faults, which cost 0.4-1.8 s (6-20%) of ViT-B's ``set_image`` on a 2-core CPU
(``benchmarks/bench_encoder.py`` prints the time both ways, alternating in one process). :func:`keep_freed_memory`
tells ``malloc`` to serve every block from its heap and to keep up to ``keep_bytes`` of free heap top, so the next
image reuses the pages of the last one. The price is memory: the resident size stays near the peak of one image
instead of falling back after it, and the peak rises by 5-8% (``benchmarks/bench_memory.py``, sam_vit_b on a 2-core
CPU: segment 2674 -> 2892 MB, label 3007 -> 3161 MB); glibc's heap also grows by up to about 0.5 GB of same-size
blocks before it starts reusing them.

It changes the whole process's allocator, so textsam calls it only in the processes it owns (the ``textsam``
command, the web app, the Ray labeller's actors, the benchmarks), never on import; a program that uses the API
calls it itself. Set ``TEXTSAM_KEEP_FREED_MEMORY=0`` to keep glibc's defaults. On other C libraries (macOS,
Windows, musl) it does nothing and returns ``False``: a caching allocator (jemalloc, tcmalloc through
``LD_PRELOAD``) does the same job there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = "TEXTSAM_KEEP_FREED_MEMORY"
DEFAULT_KEEP_BYTES = 1 << 30  # free heap top kept: more than any model's per-image working set at 1024 px

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (whose ``mallopt`` takes the parameters above), else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory(keep_bytes: int = DEFAULT_KEEP_BYTES) -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (see the module docstring): no block is served by its
    own ``mmap``, up to ``keep_bytes`` of free heap top stay in the process, and threads started afterwards share
    the main heap. Process-wide and lasting: call it at the start of the process, before its threads.

    Returns whether the setting was applied: ``False`` on a C library other than glibc, or when the environment
    variable ``TEXTSAM_KEEP_FREED_MEMORY`` is ``0``.
    """
    if keep_bytes <= 0:
        raise ValueError(f"keep_bytes must be positive, not {keep_bytes}")
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    keep = min(int(keep_bytes), 2**31 - 1)  # mallopt takes a C int
    # One arena: a thread's own arena (the app answers requests in worker threads) is built from 64 MB heaps and
    # gets blocks larger than that from mmap again, whatever M_MMAP_MAX says. Threads created after this call
    # share the main heap (textsam's threads allocate few, large blocks, so they rarely wait on its lock).
    return (bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, keep))
            and bool(libc.mallopt(_M_ARENA_MAX, 1)))
