"""Per-request recall latency of each channel: one user per call (a serving request), prints one
JSON object. Fits the channels of a serving YAML on its dataset (RecBole RS split) and times
`channel.recall(np.array([u]), n)` over `--requests` random users (median and p99 µs).

    .venv/bin/python bench/serving_recall.py --config bench/serving_ml100k.yaml --requests 500
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "bench" / "serving_ml100k.yaml"))
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--channels", default="", help="comma-separated subset (default: all of the YAML)")
    args = p.parse_args()

    from funnelrec.core.config import load_yaml
    from funnelrec.data import load_dataset
    from funnelrec.data.dataset import TrainData
    from funnelrec.data.splits import random_split_by_user
    from funnelrec.pipeline.config import FunnelConfig
    from funnelrec.pipeline.funnel import build_channel
    from funnelrec.recall.base import RecallContext
    from funnelrec.train.trainer import setup_torch

    setup_torch(1)
    spec = load_yaml(args.config)
    ds = load_dataset(spec["dataset"]["name"], **spec["dataset"].get("params", {}))
    split = random_split_by_user(ds.interactions, seed=2020)
    data = TrainData(ds, split.train)
    cfg = FunnelConfig.from_dict(spec["funnel"])
    only = set(filter(None, args.channels.split(",")))
    rng = np.random.default_rng(0)
    users = rng.integers(0, ds.n_users, args.requests)
    out = {}
    for cs in cfg.recall.channels:
        if only and cs.name not in only:
            continue
        t0 = time.perf_counter()
        ch = build_channel(cs).fit(data)
        fit_s = time.perf_counter() - t0
        ctx = RecallContext(time=int(data.now))
        for u in users[:20]:  # warm-up (numba, caches)
            ch.recall(np.array([u]), cs.n, ctx)
        lat = []
        for u in users:
            t0 = time.perf_counter()
            ch.recall(np.array([u]), cs.n, ctx)
            lat.append((time.perf_counter() - t0) * 1e6)
        a = np.asarray(lat)
        out[cs.name] = {"fit_s": round(fit_s, 2), "p50_us": round(float(np.median(a)), 1),
                        "p99_us": round(float(np.percentile(a, 99)), 1), "mean_us": round(float(a.mean()), 1)}
    print(json.dumps({"bench": "serving_recall", "config": args.config, "dataset": spec["dataset"],
                      "n_users": ds.n_users, "n_items": ds.n_items, "requests": args.requests,
                      "load_avg": os.getloadavg(), "channels": out,
                      "sum_p50_us": round(sum(v["p50_us"] for v in out.values()), 1)}))


if __name__ == "__main__":
    main()
