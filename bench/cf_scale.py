"""itemCF and Swing neighbour lists at scale: a Zipf world of 20M interactions, 1M users,
200k items (default). Each builder runs in its own process so its peak RSS is its own.
Prints one JSON object: wall and CPU seconds (all threads) and peak RSS (MB) per builder, with
the caps used. Numba kernels are cached on disk: run once before timing.

    .venv/bin/python bench/cf_scale.py                         # full size
    .venv/bin/python bench/cf_scale.py --interactions 2000000 --users 100000 --items 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numba
import numpy as np
import scipy.sparse as sp


def zipf_world(n_users: int, n_items: int, n_inter: int, seed: int = 0) -> sp.csr_matrix:
    """Binary (U, I) matrix: item popularity ∝ rank^-0.9, user activity lognormal (σ = 1)."""
    rng = np.random.default_rng(seed)
    p_item = 1.0 / np.arange(1, n_items + 1) ** 0.9
    p_item /= p_item.sum()
    act = rng.lognormal(0.0, 1.0, n_users)
    act /= act.sum()
    users = rng.choice(n_users, n_inter, p=act).astype(np.int32)
    items = rng.permutation(n_items)[np.searchsorted(np.cumsum(p_item), rng.random(n_inter)).clip(0, n_items - 1)]
    m = sp.csr_matrix((np.ones(n_inter, np.float32), (users, items.astype(np.int32))), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def child(args) -> dict:
    from funnelrec.recall.itemcf import itemcf_neighbours
    from funnelrec.recall.swing import swing_neighbours

    t0 = time.perf_counter()
    R = zipf_world(args.users, args.items, args.interactions, args.seed)
    gen_s = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    if args.algo == "itemcf":
        from funnelrec.recall._common import cap_rows

        N = itemcf_neighbours(cap_rows(R, args.max_items_per_user, 0), args.k, "asymmetric", "iuf", 0.0, 0.3)
    else:
        N = swing_neighbours(R, args.k, 1.0, 0.5, args.max_users_per_item, args.max_items_per_user, 0)
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"algo": args.algo, "build_s": round(build_s, 1), "build_cpu_s": round(build_cpu, 1),
            "numba_threads": numba.get_num_threads(), "generate_s": round(gen_s, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_after_generate_mb": round(rss_before), "nnz": int(R.nnz), "neighbour_nnz": int(N.nnz),
            "k": args.k, "max_users_per_item": args.max_users_per_item if args.algo == "swing" else None,
            "max_items_per_user": args.max_items_per_user}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--interactions", type=int, default=20_000_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--max-users-per-item", type=int, default=100)
    ap.add_argument("--max-items-per-user", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algo", choices=["itemcf", "swing", "both"], default="both")
    args = ap.parse_args()
    if args.algo != "both":
        print(json.dumps(child(args)))
        return
    out = {"world": {"users": args.users, "items": args.items, "interactions": args.interactions}}
    for algo in ("itemcf", "swing"):
        cmd = [sys.executable, __file__, "--algo", algo] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "algo"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out[algo] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
