"""snake_merge latency for one user: 6 channels × 500 candidates over a 200k catalogue, total
1000 (little overlap) and total 500. Prints one JSON object (median µs per call).

    .venv/bin/python bench/merge_speed.py
"""

from __future__ import annotations

import json
import time

import numpy as np

from funnelrec.core.types import CandidateBatch
from funnelrec.recall.merge import snake_merge


def main() -> None:
    rng = np.random.default_rng(0)
    batches = [CandidateBatch(f"c{k}", rng.choice(200_000, (1, 500), replace=False).astype(np.int64),
                              np.sort(rng.random((1, 500)).astype(np.float32))[:, ::-1].copy())
               for k in range(6)]
    out = {}
    for total, quotas in ((1000, None), (500, {"c0": 200, "c1": 100})):
        snake_merge(batches, quotas, None, total)  # compile / warm
        times = []
        for _ in range(300):
            t = time.perf_counter()
            snake_merge(batches, quotas, None, total)
            times.append(time.perf_counter() - t)
        out[f"total_{total}"] = {"median_us": round(float(np.median(times)) * 1e6, 1),
                                 "p99_us": round(float(np.percentile(times, 99)) * 1e6, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
