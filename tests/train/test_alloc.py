"""train/alloc.tune_malloc: a freed multi-MB block is reused from the heap, not mapped anew.

Counts minor page faults (deterministic, not timed) in a fresh interpreter that mallocs,
touches and frees a 16 MB block, then mallocs and touches one again (the pattern of a training
step's activations). Under glibc's defaults the first block is mmapped and unmapped on free, and
the second one comes from fresh pages: ~4,096 faults for its 4 KB pages. With the thresholds
raised the second block reuses the first one's pages: no faults.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource, sys
from funnelrec.train.alloc import tune_malloc
ok = tune_malloc() if sys.argv[1] == "1" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 16 << 20
p = libc.malloc(n)
ctypes.memset(p, 1, n)
libc.free(p)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
q = libc.malloc(n)
ctypes.memset(q, 1, n)
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def _faults(tuned: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, "1" if tuned else "0"], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@glibc
def test_tuned_malloc_reuses_a_freed_block():
    _, default = _faults(False)
    ok, tuned = _faults(True)
    assert ok == "True"
    assert default > 2000  # 16 MB of fresh 4 KB pages (fewer if the kernel maps huge pages)
    assert tuned < 100


def test_idempotent():
    from funnelrec.train.alloc import tune_malloc

    assert tune_malloc() == tune_malloc()
