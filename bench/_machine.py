"""The CPU a bench ran on, for its JSON: model name and the flags that decide GEMM speed.

Session 10 found the same code 1.4× slower against RecBole on an AMD EPYC without AMX than on
the Intel box with AMX of sessions 5–9 (docs/BENCHMARKS.md): a throughput or latency figure
means little without the CPU it was taken on.

    >>> sorted(cpu())
    ['cores', 'flags', 'model']
"""

from __future__ import annotations

import os
from pathlib import Path

FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma")


def cpu() -> dict:
    """{"model": /proc/cpuinfo's model name, "flags": which of FLAGS it has, "cores": os.cpu_count()}."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in FLAGS if f in flags], "cores": os.cpu_count()}
