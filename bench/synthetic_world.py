"""Time and peak memory of the synthetic world loader; prints one JSON object.

    .venv/bin/python bench/synthetic_world.py --users 1000000 --items 200000 --interactions 20000000

`seconds` is generation + `Dataset.build` (what `load_dataset("synthetic", …)` costs) after a
tiny warm-up world (`warmup_seconds`: loading or compiling the numba kernels). Peak RSS is the
process maximum (resource.getrusage), so it includes the warm-up and the interpreter.
`--reference` also times numpy's `Generator.choice(p=popularity)` drawing the same number of
pool candidates: the plain-numpy way to do only the first step of the generator;
`--join-build` times `Dataset.build` through its general join path for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", action="store_true",
                    help="also time numpy Generator.choice(p=popularity) for the same pool draws")
    ap.add_argument("--join-build", action="store_true",
                    help="also time Dataset.build without dense_ids (the general join path)")
    args = ap.parse_args()

    from funnelrec.data.dataset import Dataset
    from funnelrec.data.synthetic import SCHEMA, WorldConfig, generate_world, load_synthetic

    t = time.perf_counter()
    load_synthetic(n_users=100, n_items=50, n_interactions=1_000, seed=args.seed)
    warmup = time.perf_counter() - t

    cfg = WorldConfig(n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=args.seed)
    t0 = time.perf_counter()
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    world, inter, users, items = generate_world(cfg)
    t1 = time.perf_counter()
    ds = Dataset.build("synthetic", inter, SCHEMA, users=users, items=items, extras={"world": world}, dense_ids=True)
    t2 = time.perf_counter()
    c2 = resource.getrusage(resource.RUSAGE_SELF)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    reference = {}
    if args.reference:  # the plain-numpy way to draw the candidate pools alone (no preference, no labels)
        rng = np.random.default_rng(args.seed)
        t = time.perf_counter()
        c = resource.getrusage(resource.RUSAGE_SELF)
        step = 1 << 19
        for a in range(0, args.interactions, step):
            rng.choice(ds.n_items, size=(min(step, args.interactions - a), cfg.pool_size), p=world.popularity)
        c3 = resource.getrusage(resource.RUSAGE_SELF)
        reference = {"reference_numpy_choice_seconds": round(time.perf_counter() - t, 2),
                     "reference_numpy_choice_cpu_seconds": round(c3.ru_utime + c3.ru_stime - c.ru_utime - c.ru_stime, 2)}

    if args.join_build:
        t = time.perf_counter()
        Dataset.build("synthetic", inter, SCHEMA, users=users, items=items)
        reference["join_build_seconds"] = round(time.perf_counter() - t, 2)

    i = ds.interactions
    counts = np.sort(np.bincount(i["item_idx"].to_numpy(), minlength=ds.n_items))[::-1]
    per_user = np.bincount(i["user_idx"].to_numpy(), minlength=ds.n_users)
    print(json.dumps({
        "bench": "synthetic_world",
        "users": ds.n_users, "items": ds.n_items, "rows": i.height,
        "seconds": round(t2 - t0, 2),
        "generate_seconds": round(t1 - t0, 2),
        "build_seconds": round(t2 - t1, 2),
        "cpu_seconds": round(c2.ru_utime + c2.ru_stime - c0.ru_utime - c0.ru_stime, 2),
        "warmup_seconds": round(warmup, 2),
        "peak_rss_gb": round(peak_gb, 3),
        "rows_per_s": round(i.height / (t2 - t0)),
        "click_rate": round(float(i["click"].mean()), 4),
        "like_rate": round(float(i["like"].mean()), 4),
        "mean_watch_time_clicked": round(float(i.filter(i["click"] == 1)["watch_time"].mean()), 1),
        "top1pct_item_share": round(float(counts[: max(1, ds.n_items // 100)].sum() / counts.sum()), 4),
        "items_never_shown": int((counts == 0).sum()),
        "user_rows_median_max": [int(np.median(per_user)), int(per_user.max())],
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        **reference,
    }))


if __name__ == "__main__":
    main()
