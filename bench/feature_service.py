"""Throughput of the feature service (issue #10 item 2, online/features.py), one JSON object.

Per backend (memory, SQLite, Redis — a local redis-server on a free port when it is on PATH):
- updates: `FeatureService.update` of feedback batches (`--batch` events each, 70 % impressions,
  the rest clicks / likes / purchases / watches over `--items` items and `--users` users, times over
  9 days) — events/s and calls/s; with the default 3 windows and 4 counted types every event
  increments 3 item and 3 user counters, and a consumption one recent-category entry;
- item lookups: `item_features(candidates, now)` for `--candidates` items at once (what a ranking
  request would read) — calls/s and items/s, first over `--lookups` random candidate sets (most
  items read for the first time at this `now`: Redis computes their window totals), then "warm":
  the same sets again (Redis reads its rolling totals as they are);
- user lookups: `user_features(user, now)` — calls/s.

    python bench/feature_service.py [--events 50000] [--batch 10] [--candidates 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import numpy as np
import polars as pl

from funnelrec.online.features import FeatureConfig, build_feature_service
from funnelrec.pipeline.eventlog import FeedbackEvent

T0 = 1_700_000_000


def _events(n: int, n_items: int, n_users: int, seed: int = 0) -> list[FeedbackEvent]:
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = rng.choice(n_items, n, p=pop / pop.sum())
    users = rng.integers(0, n_users, n)
    ts = T0 + np.sort(rng.integers(0, 9 * 86400, n))
    types = rng.choice(["impression", "click", "like", "purchase", "watch_time"], n, p=[0.7, 0.15, 0.07, 0.03, 0.05])
    return [FeedbackEvent(None, f"u{u}", str(i), str(t), 30.0, int(s)) for u, i, t, s in zip(users, items, types, ts)]


def _start_redis(workdir: str) -> tuple[subprocess.Popen, str] | None:
    server = shutil.which("redis-server")
    if server is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    return None


def _run(name: str, kw: dict, cfg: FeatureConfig, items: pl.DataFrame, events: list[FeedbackEvent],
         args: argparse.Namespace) -> dict:
    fs = build_feature_service(name, cfg, items=items, **kw)
    batches = [events[i:i + args.batch] for i in range(0, len(events), args.batch)]
    t0 = time.perf_counter()
    for b in batches:
        fs.update(b)
    up = time.perf_counter() - t0
    now = events[-1].ts + 1
    rng = np.random.default_rng(1)
    cands = [[str(i) for i in rng.choice(args.items, args.candidates, replace=False)] for _ in range(args.lookups)]
    t0 = time.perf_counter()
    for c in cands:
        fs.item_features(c, now)
    look = time.perf_counter() - t0
    t0 = time.perf_counter()  # the same candidate sets again: every window total already at `now`
    for c in cands:
        fs.item_features(c, now)
    warm = time.perf_counter() - t0
    users = [f"u{u}" for u in rng.integers(0, args.users, args.lookups)]
    t0 = time.perf_counter()
    for u in users:
        fs.user_features(u, now)
    ulook = time.perf_counter() - t0
    fs.close()
    return {"update_events_per_s": round(len(events) / up), "update_calls_per_s": round(len(batches) / up),
            "item_lookup_calls_per_s": round(args.lookups / look),
            "item_lookup_items_per_s": round(args.lookups * args.candidates / look),
            "item_lookup_warm_calls_per_s": round(args.lookups / warm),
            "user_lookup_calls_per_s": round(args.lookups / ulook)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--lookups", type=int, default=300)
    args = ap.parse_args()
    cfg = FeatureConfig(category_column="category")
    items = pl.DataFrame({"item_id": [str(i) for i in range(args.items)],
                          "category": [f"c{i % 50}" for i in range(args.items)]})
    events = _events(args.events, args.items, args.users)
    out: dict = {"events": args.events, "batch": args.batch, "candidates": args.candidates,
                 "windows": [list(w) for w in cfg.windows], "count_types": list(cfg.count_types),
                 "load_1m": round(os.getloadavg()[0], 2), "backends": {}}
    with tempfile.TemporaryDirectory() as d:
        out["backends"]["memory"] = _run("memory", {}, cfg, items, events, args)
        out["backends"]["sqlite"] = _run("sqlite", {"state_dir": d}, cfg, items, events, args)
        started = _start_redis(d)
        if started is not None:
            proc, url = started
            try:
                out["backends"]["redis"] = _run("redis", {"redis_url": url}, cfg, items, events, args)
            finally:
                proc.terminate()
                proc.wait(10)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
