"""The live catalogue's costs (issue #10 item 3), printed as one JSON object.

- rebuild_ms: `Funnel.with_items` for n new items on MovieLens-100k (itemCF, fresh, tag, author,
  vector channels, LR ranker, pre-ranker) — what the first request after a catalogue change pays;
- version_read_us: one `Catalogue.version()` (memory, SQLite; Redis when redis-server is on PATH)
  — what every request pays;
- recommend_ms p50 / p99 of in-process `RecommenderService.recommend` with an empty catalogue,
  with `--hidden` rules (ids outside the catalogue: same candidates, so the difference is the
  per-candidate check), and with an attribute filter as well.

    python bench/catalogue.py [--hidden 10000] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from funnelrec.data import load_dataset
from funnelrec.data.splits import random_split_by_user
from funnelrec.online.catalogue import MemoryCatalogue, RedisCatalogue, SQLiteCatalogue
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.service import RecommenderService


def _latency(svc: RecommenderService, users: list[str], **kw) -> dict[str, float]:
    ms = []
    for u in users:
        t0 = time.perf_counter()
        svc.recommend(u, k=10, context={"time": 893_286_638}, **kw)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3)}


def _version_us(cat, n: int = 2000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        cat.version()
    return round((time.perf_counter() - t0) / n * 1e6, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    ds = load_dataset("movielens-100k")
    split = random_split_by_user(ds.interactions, seed=2020)
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 200}, {"name": "fresh", "n": 50}, {"name": "tag", "n": 50},
                                {"name": "author", "n": 50},
                                {"name": "vector", "n": 100, "params": {"epochs": 1, "user_columns": ["gender"]}}],
                   "merge": {"total": 300}},
        "rank": {"epochs": 1}, "prerank": {"enabled": True, "keep": 150, "epochs": 1}})
    t0 = time.perf_counter()
    funnel = FunnelBuilder(cfg).fit(ds, split.train, labels=split.valid)
    out: dict = {"dataset": "movielens-100k", "items": ds.n_items, "fit_s": round(time.perf_counter() - t0, 1),
                 "rebuild_ms": {}}
    for n in (1, 100, 1000):
        new = pl.DataFrame({"item_id": np.arange(10_000, 10_000 + n), "genres": [["Drama"]] * n,
                            "directors": [["Steven Spielberg"]] * n, "publish_time": [893_286_000] * n})
        funnel.with_items(new)  # warm (numba, lazy imports)
        ms = []
        for _ in range(5):
            t0 = time.perf_counter()
            funnel.with_items(new)
            ms.append((time.perf_counter() - t0) * 1e3)
        out["rebuild_ms"][str(n)] = round(float(np.median(ms)), 1)  # median of 5
    with tempfile.TemporaryDirectory() as d:
        out["version_read_us"] = {"memory": _version_us(MemoryCatalogue()),
                                  "sqlite": _version_us(SQLiteCatalogue(Path(d) / "c.db"))}
        server = shutil.which("redis-server")
        if server:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = subprocess.Popen([server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", d],
                                    stdout=subprocess.DEVNULL)
            try:
                time.sleep(0.5)
                out["version_read_us"]["redis"] = _version_us(RedisCatalogue(f"redis://127.0.0.1:{port}/0"))
            finally:
                proc.terminate()
                proc.wait(10)
    svc = RecommenderService(funnel)
    users = [str(u) for u in np.random.default_rng(0).choice(ds.users["user_id"].to_numpy(), args.requests)]
    svc.recommend(users[0])  # warm
    lat = {"empty": _latency(svc, users)}
    # rules over ids outside the catalogue: the candidates stay the same, so the difference is
    # the per-candidate check against R rules alone
    for i in range(args.hidden):
        svc.catalogue.hide_item(10**9 + i, now=0)
    svc.recommend(users[0])  # the rebuild after the change, outside the timing
    lat[f"rules_{args.hidden}"] = _latency(svc, users)
    lat[f"rules_{args.hidden}+filter"] = _latency(svc, users, filters={"genres": ["Drama", "Comedy"]})
    lat["empty_again"] = _latency(RecommenderService(funnel), users)  # the drift of the machine meanwhile
    out["recommend_ms"] = lat
    # the per-request work alone, on 300 candidates (the merge total): the rules' check against
    # R = --hidden rules, and the attribute filter (gathering the candidates' values)
    cur, live = svc.live_catalogue(svc.current)
    cand = np.random.default_rng(1).choice(len(cur.item_keys), 300, replace=False)
    keys = cur.item_keys[cand]
    allowed = live.attribute_filter({"genres": ["Drama", "Comedy"]})
    check = {}
    for name, fn in (("rules", lambda: live.rules.blocked(keys, 893_286_638)),
                     ("filter", lambda: allowed(cur.indices_of_keys(keys)))):
        fn()
        t0 = time.perf_counter()
        for _ in range(2000):
            fn()
        check[name] = round((time.perf_counter() - t0) / 2000 * 1e6, 1)
    out["check_us_300_candidates"] = check
    out["requests"] = args.requests
    print(json.dumps(out))


if __name__ == "__main__":
    main()
