"""The author channel with and without the follow graph on the synthetic world (#16 item 1).
Prints one JSON object.

    .venv/bin/python bench/follow_graph.py
    .venv/bin/python bench/follow_graph.py --users 20000 --items 4000 --interactions 600000 --follows 5

World: data/synthetic.py with `follows_per_user` (users follow ~Poisson(f) authors drawn ∝
exp(u · mean vector of the author's items)); the impression log is the same with or without
follows. Consumption = rows with click > 0. Temporal split: clicks before 80 % of the period
train the channel (and only follow edges with ts ≤ the last training click count), the later
clicks are the test positives. Every user with a test click is ranked; the channel excludes
the user's training items. NDCG@10 / recall@10 / recall@100 of:

- "consumption": AuthorRecall without follows (the dataset without a follows table: similar
  authors by co-consumption), the channel as it was;
- "follows": the same channel (defaults) on the dataset with the follows table: followed
  authors in the weights (γ = 1), their items of the last day first (D = 1), similar authors by
  co-following ∪ co-consumption;
- "follows_fresh_7d": D = 7 days; "follows_no_fresh_list": D = 0 (follows in the weights only);
- "follows_no_similar": follows, k_similar = 0;
- "consumption_no_similar": consumption, k_similar = 0 (the pair to the row above).

Rows "followers" restrict to test users with at least one follow edge in the training window.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import polars as pl

from funnelrec.data import load_dataset
from funnelrec.data.dataset import Dataset, TrainData, interactions_csr
from funnelrec.eval.metrics import ranking_metrics
from funnelrec.recall.author import AuthorConfig, AuthorRecall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=2_000)
    ap.add_argument("--interactions", type=int, default=300_000)
    ap.add_argument("--follows", type=float, default=5.0, help="mean follows per user")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    ds = load_dataset("synthetic", n_users=args.users, n_items=args.items, n_interactions=args.interactions,
                      seed=args.seed, follows_per_user=args.follows)
    gen_s = time.perf_counter() - t0
    clicks = ds.interactions.filter(pl.col("click") > 0)
    t_lo, t_hi = int(ds.interactions["timestamp"].min()), int(ds.interactions["timestamp"].max())
    cut = t_lo + 0.8 * (t_hi - t_lo)
    train, test = clicks.filter(pl.col("timestamp") < cut), clicks.filter(pl.col("timestamp") >= cut)
    plain = Dataset(ds.name, ds.interactions, ds.users, ds.items, ds.schema, {}, follows=None)
    td_plain, td_follow = TrainData(plain, train), TrainData(ds, train)
    positives = interactions_csr(test, ds.n_users, ds.n_items)
    users = np.unique(test["user_idx"].to_numpy())
    followers = np.unique(ds.follows.filter(pl.col("ts") <= td_follow.now)["user_idx"].to_numpy())
    is_follower = np.isin(users, followers)

    runs = {"consumption": (td_plain, {}), "follows": (td_follow, {}),
            "follows_fresh_7d": (td_follow, {"fresh_days": 7.0}),
            "follows_no_fresh_list": (td_follow, {"fresh_days": 0.0}),
            "follows_no_similar": (td_follow, {"k_similar": 0}),
            "consumption_no_similar": (td_plain, {"k_similar": 0})}
    out: dict = {}
    for name, (td, kw) in runs.items():
        ch = AuthorRecall(AuthorConfig(column="author", **kw))
        t1 = time.perf_counter()
        ch.fit(td)
        t2 = time.perf_counter()
        b = ch.recall(users, 100)
        t3 = time.perf_counter()
        row = {"fit_s": round(t2 - t1, 3), "recall_s": round(t3 - t2, 3)}
        for group, sel in (("all", slice(None)), ("followers", is_follower)):
            m = ranking_metrics(b.items[sel], positives[users[sel]], (10, 100))
            row[group] = {"NDCG@10": round(m["ndcg@10"], 4), "recall@10": round(m["recall@10"], 4),
                          "recall@100": round(m["recall@100"], 4)}
        out[name] = row
    print(json.dumps({
        "bench": "follow_graph",
        "world": {"users": args.users, "items": args.items, "impressions": args.interactions,
                  "follows_per_user": args.follows, "seed": args.seed, "generate_s": round(gen_s, 2),
                  "follow_edges": ds.follows.height, "train_clicks": train.height, "test_clicks": test.height,
                  "test_users": int(len(users)), "test_users_following": int(is_follower.sum())},
        "author_channel": out,
        "ndcg10_follows_minus_consumption": round(out["follows"]["all"]["NDCG@10"]
                                                  - out["consumption"]["all"]["NDCG@10"], 4),
        "threads": os.environ.get("FUNNELREC_THREADS", "default"),
    }, indent=1))


if __name__ == "__main__":
    main()
