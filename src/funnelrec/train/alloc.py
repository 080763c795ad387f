"""Allocator settings for the training loop: keep freed activation memory in the heap.

A CPU training step allocates and frees the same few-MB activation and gradient tensors every
batch (DCNv2 at batch 2048: (2048, 142) and (2048, 256) float32 arrays, 1.2–2 MB each). glibc's
malloc serves blocks above its mmap threshold with a fresh mmap and returns them with munmap,
and trims the top of the heap back to the OS once more than 128 KB is free there; either way
the next step touches new pages, and each page costs a minor fault plus the kernel zeroing it
(more still in a VM). Measured here: 1,524 minor faults per forward of DCNv2's three cross
layers (2.3 ms → 4.7 ms CPU at load ~12), ~300 per DeepFM/DCNv2 training step; with the
thresholds below, 0–3 per forward and ~110 per step (docs/BENCHMARKS.md, Session 5).

`tune_malloc()` raises the mmap threshold to 32 MB (glibc's maximum on 64-bit) and the trim
threshold to 256 MB via mallopt(3): the same as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
in the environment, set from inside the process. Cost: up to 256 MB of freed heap kept by the
process. Process-wide and idempotent; a no-op (returns False) where the C library is not
glibc.

    >>> isinstance(tune_malloc(), bool)
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: a larger value is refused
TRIM_THRESHOLD = 256 << 20
TOP_PAD = 32 << 20

_done: bool | None = None


def tune_malloc() -> bool:
    """Set glibc's mmap/trim thresholds once per process; True when they are in effect."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(k, v) == 1 for k, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                             (M_TOP_PAD, TOP_PAD)))
    _done = ok
    return ok
