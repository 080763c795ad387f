"""Exposure-filter benchmark: prints one JSON object.

- hashing 1,000 ids: per-id xxhash.xxh3_64 calls vs the numpy splitmix64 the filters use;
- `contains` on 1,000 candidates (median / p99 over --calls calls): in-memory
  CountingBloomFilter (one slice, and a 7-day window of 8 daily slices), and through the
  memory / SQLite / Redis exposure stores (per-user filters, DEFAULT_EXPOSURE_CONFIG);
- store `add` latency (one call = one user's --add-size exposures, committed);
- measured false-positive rate vs configured at capacity for several p;
- bytes per user.

    .venv/bin/python bench/bloom.py                      # full size
    .venv/bin/python bench/bloom.py --calls 300 --users 200 --fpr-capacity 20000 --probes 200000
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

from funnelrec.filter import (
    DAY,
    DEFAULT_EXPOSURE_CONFIG,
    CountingBloomFilter,
    MemoryExposureStore,
    RedisExposureStore,
    SQLiteExposureStore,
    expected_fp_rate,
    hash64,
)

T0 = 1_700_000_000


def timed(fn, calls: int) -> dict:
    for _ in range(min(50, calls)):
        fn()
    ts = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        fn()
        ts[i] = time.perf_counter() - t
    return {"median_us": round(float(np.median(ts)) * 1e6, 1), "p99_us": round(float(np.percentile(ts, 99)) * 1e6, 1)}


def bench_hash(calls: int, rng) -> dict:
    ids = rng.integers(0, 1 << 40, 1000)

    def per_id_xxhash():
        return np.fromiter((xxhash.xxh3_64_intdigest(int(i).to_bytes(8, "little", signed=True)) for i in ids),
                           dtype=np.uint64, count=ids.size)

    return {"xxh3_64_per_id_1000": timed(per_id_xxhash, calls), "numpy_splitmix64_1000": timed(lambda: hash64(ids), calls)}


def bench_filters(calls: int, rng) -> dict:
    cap, p = DEFAULT_EXPOSURE_CONFIG.capacity, DEFAULT_EXPOSURE_CONFIG.fp_rate
    items = rng.choice(1 << 40, size=cap, replace=False)
    cands = rng.integers(0, 1 << 40, 1000)
    cb = CountingBloomFilter(cap, p)
    cb.add(items)
    cw = CountingBloomFilter(cap, p, window_s=7 * DAY)
    for d in range(8):
        cw.add(items[d * cap // 8 : (d + 1) * cap // 8], ts=T0 + d * DAY)
    now = T0 + 7 * DAY
    return {
        "config": {"capacity": cap, "fp_rate": p, "m": cb.m, "k": cb.k},
        "counting_contains_1000": timed(lambda: cb.contains(cands), calls),
        "counting_window_8_slices_contains_1000": timed(lambda: cw.contains(cands, now), calls),
        "counting_add_1000": timed(lambda: CountingBloomFilter(cap, p).add(cands), max(50, calls // 4)),
    }


def start_redis(workdir: Path):
    exe = shutil.which("redis-server")
    if exe is None:
        return None, None
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    return None, None


def bench_store(store, n_users: int, days: int, per_day: int, add_size: int, calls: int, rng) -> dict:
    users = [f"user{u}" for u in range(n_users)]
    t = time.perf_counter()
    for u in users:
        for d in range(days):
            store.add(u, rng.integers(0, 1 << 40, per_day), ts=T0 + d * DAY)
    fill_s = time.perf_counter() - t
    now = T0 + (days - 1) * DAY + 3600
    cands = rng.integers(0, 1 << 40, 1000)
    pick = rng.integers(0, n_users, calls + 50)
    it = iter(pick.tolist())
    out = {"users": n_users, "exposures_per_user": days * per_day,
           "fill_adds_per_s": round(n_users * days / fill_s, 1),
           "filter_1000": timed(lambda: store.filter(users[next(it)], cands, now), calls)}
    it2 = iter(rng.integers(0, n_users, calls + 50).tolist())
    out[f"add_{add_size}"] = timed(lambda: store.add(users[next(it2)], rng.integers(0, 1 << 40, add_size), now), calls)
    return out


def bench_stores(args, rng) -> dict:
    cfg = DEFAULT_EXPOSURE_CONFIG
    kw = dict(n_users=args.users, days=args.days, per_day=cfg.capacity // args.days, add_size=args.add_size,
              calls=args.calls, rng=rng)
    out = {"config": {k: getattr(cfg, k) for k in ("capacity", "fp_rate", "window_s", "slice_s")}}
    out["memory"] = bench_store(MemoryExposureStore(cfg), **kw)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteExposureStore(Path(tmp) / "e.db", cfg)
        out["sqlite"] = bench_store(store, **kw)
        store.close()
        out["sqlite"]["file_bytes_per_user"] = round(
            sum(f.stat().st_size for f in Path(tmp).iterdir()) / args.users)
        # cold: a new store per call (nothing cached), i.e. the cost of loading a user's slices
        cold = SQLiteExposureStore(Path(tmp) / "e.db", cfg)
        it = iter(rng.integers(0, args.users, args.calls + 50).tolist())
        cands = rng.integers(0, 1 << 40, 1000)

        def cold_filter():
            cold._cache.clear()
            cold.filter(f"user{next(it)}", cands, T0 + (args.days - 1) * DAY)

        out["sqlite"]["filter_1000_uncached"] = timed(cold_filter, args.calls)
        cold.close()
        proc, url = start_redis(Path(tmp))
        if proc is None:
            out["redis"] = "skipped: redis-server not on PATH"
        else:
            try:
                store = RedisExposureStore(url, config=cfg)
                out["redis"] = bench_store(store, **kw)
                store.close()
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    return out


def bench_fpr(capacity: int, probes: int, rng) -> list[dict]:
    rows = []
    items = rng.choice(1 << 40, size=capacity, replace=False)
    probe = rng.integers(1 << 41, 1 << 62, size=probes)
    for p in (0.1, 0.05, 0.01, 0.001):
        cw = CountingBloomFilter(capacity, p, window_s=7 * DAY)
        for d in range(7):
            cw.add(items[d * capacity // 7 : (d + 1) * capacity // 7], ts=T0 + d * DAY)
        assert cw.contains(items, T0 + 6 * DAY).all()
        fc = float(cw.contains(probe, T0 + 6 * DAY).mean())
        rows.append({
            "fp_rate": p, "m": cw.m, "k": cw.k, "theory": round(expected_fp_rate(cw.m, cw.k, capacity), 6),
            "counting_7_slices": round(fc, 6), "counting_rel_err": round(fc / p - 1, 4),
            "sampling_sd_rel": round(float(np.sqrt((1 - p) / (p * probes))), 4),
        })
    return rows


def memory_per_user() -> dict:
    cfg = DEFAULT_EXPOSURE_CONFIG
    cb = cfg.build()
    cb.add(np.arange(10), ts=T0)
    return {
        "config": {"capacity": cfg.capacity, "fp_rate": cfg.fp_rate, "window_days": cfg.window_s // DAY},
        "counting_slice_bytes": cb.nbytes,
        "slice_blob_bytes": len(cb.slice_to_bytes(cb.slice_ids[0])),
        "union_cache_bytes": (cb.m + 7) // 8,
        "max_slices_in_window": cfg.window_s // cfg.slice_s + 1,
        "worst_case_user_bytes": cb.nbytes * (cfg.window_s // cfg.slice_s + 1) + (cb.m + 7) // 8,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--add-size", type=int, default=20)
    ap.add_argument("--fpr-capacity", type=int, default=100_000)
    ap.add_argument("--probes", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    out = {
        "bench": "bloom",
        "args": vars(args),
        "machine": f"{platform.processor() or platform.machine()}, load {Path('/proc/loadavg').read_text().split()[:3]}",
        "hash": bench_hash(args.calls, rng),
        "filters": bench_filters(args.calls, rng),
        "stores": bench_stores(args, rng),
        "fpr_at_capacity": {"capacity": args.fpr_capacity, "probes": args.probes,
                            "rows": bench_fpr(args.fpr_capacity, args.probes, rng)},
        "memory_per_user": memory_per_user(),
    }
    out["wall_s"] = round(time.perf_counter() - t, 1)
    out["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
