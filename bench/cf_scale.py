"""itemCF and Swing neighbour lists at scale: a Zipf world of 20M interactions, 1M users,
200k items (default). Each builder runs in its own process so its peak RSS is its own.
Prints one JSON object: wall and CPU seconds (all threads) and peak RSS (MB) per builder, with
the caps used. Numba kernels are cached on disk: run once before timing.

    .venv/bin/python bench/cf_scale.py                         # full size
    .venv/bin/python bench/cf_scale.py --interactions 2000000 --users 100000 --items 20000

`--engine spark` times Swing twice on the same world in one run: the in-process numba kernel
and the Spark job (engines/spark.py, `--spark-master`, default local[2]) from a Parquet file of
the pairs to the Parquet neighbour table. The Spark figure excludes the JVM start (reported
apart); "ratio" is spark / in-process wall time; the neighbour-entry counts of both are printed.
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


def descendants_cpu_s() -> float:
    """CPU seconds (user + system, all threads, reaped children included) of every live process
    below this one: the JVM that pyspark's spark-submit starts. Read from /proc before the JVM is
    stopped — getrusage(RUSAGE_CHILDREN) counts a child only once it is reaped, and pyspark never
    reaps its JVM before this process exits."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(pid)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))  # ppid; utime stime cutime cstime
    below, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, (ppid, _) in stats.items() if ppid in frontier and p not in below}
        below |= frontier
    return sum(stats[p][1] for p in below) / tick


def spark_child(args) -> dict:
    import tempfile
    from pathlib import Path

    import polars as pl

    from funnelrec.engines import EngineSpec
    from funnelrec.engines.spark import spark_session, swing_job

    R = zipf_world(args.users, args.items, args.interactions, args.seed)
    u, i = R.nonzero()
    with tempfile.TemporaryDirectory(prefix="cf_scale_spark_", dir=args.spark_tmp or None) as tmp:
        pl.DataFrame({"user": u.astype(np.int64), "item": i.astype(np.int64)}).write_parquet(f"{tmp}/pairs.parquet")
        del R, u, i
        t0 = time.perf_counter()
        conf = {"spark.driver.memory": args.spark_memory, "spark.local.dir": tmp}
        spark = spark_session(EngineSpec("spark", master=args.spark_master, shuffle_partitions=args.spark_partitions,
                                         conf=conf))
        start_s = time.perf_counter() - t0
        start_cpu_s = descendants_cpu_s()
        t0 = time.perf_counter()
        pairs = spark.read.parquet(f"{tmp}/pairs.parquet")
        table, cached = swing_job(pairs, args.k, 1.0, 0.5, args.max_users_per_item, args.max_items_per_user, 0)
        table.write.mode("overwrite").parquet(f"{tmp}/neighbours.parquet")
        build_s = time.perf_counter() - t0
        nnz = pl.scan_parquet(Path(tmp) / "neighbours.parquet" / "*.parquet").select(pl.len()).collect().item()
        jvm_cpu_s = descendants_cpu_s()  # the JVM's start, the job and the row count
        spark.stop()
    return {"algo": "swing", "engine": "spark", "master": args.spark_master, "build_s": round(build_s, 1),
            "jvm_cpu_s": round(jvm_cpu_s, 1), "build_cpu_s": round(jvm_cpu_s - start_cpu_s, 1),
            "jvm_start_s": round(start_s, 1), "neighbour_nnz": int(nnz), "shuffle_partitions": args.spark_partitions,
            "driver_memory": args.spark_memory}


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
    ap.add_argument("--engine", choices=["inprocess", "spark"], default="inprocess",
                    help="spark: Swing in-process and on Spark, side by side")
    ap.add_argument("--spark-master", default="local[2]")
    ap.add_argument("--spark-partitions", type=int, default=16)
    ap.add_argument("--spark-memory", default="2g", help="driver heap (local mode: the executors run in it)")
    ap.add_argument("--spark-tmp", default="", help="folder for the Parquet files and Spark's shuffle files")
    ap.add_argument("--child", choices=["inprocess", "spark"], default="inprocess", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine == "spark" and args.algo == "both":
        args.algo = "swing"
    if args.child == "spark":
        print(json.dumps(spark_child(args)))
        return
    if args.engine == "spark":
        out = {"world": {"users": args.users, "items": args.items, "interactions": args.interactions}}
        for side in ("inprocess", "spark"):
            cmd = [sys.executable, __file__, "--child", side] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "engine")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            out[side] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
                "error": proc.stderr[-800:]}
        if "build_s" in out["inprocess"] and "build_s" in out["spark"]:
            out["ratio_spark_over_inprocess"] = round(out["spark"]["build_s"] / out["inprocess"]["build_s"], 2)
        print(json.dumps(out))
        return
    if args.algo != "both":
        print(json.dumps(child(args)))
        return
    out = {"world": {"users": args.users, "items": args.items, "interactions": args.interactions}}
    for algo in ("itemcf", "swing"):
        cmd = [sys.executable, __file__, "--algo", algo] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("algo", "child", "engine")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out[algo] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
