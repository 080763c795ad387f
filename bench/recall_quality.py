"""Per-channel quality on MovieLens-100k (RecBole RS 8:1:1 per user, seed 2020) and the merged
set's recall at 500 vs each channel at 500. Prints one JSON object.

Protocol "train": rank all items except the user's training items; positives = test items.
Protocol "recbole": also mask the validation items (what RecBole 1.2.1 does at test time).
Usage: .venv/bin/python bench/recall_quality.py
"""

from __future__ import annotations

import json
import time

import numpy as np

import funnelrec.recall  # noqa: F401
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import PAD
from funnelrec.data import load_dataset
from funnelrec.data.dataset import TrainData, interactions_csr
from funnelrec.data.splits import random_split_by_user
from funnelrec.eval.metrics import ranking_metrics
from funnelrec.recall.merge import snake_merge_arrays

CHANNELS = ["itemcf", "swing", "usercf", "hot", "tag", "author", "geo", "fresh"]


def mask_rows(items: np.ndarray, mask, k: int) -> np.ndarray:
    out = np.full((items.shape[0], k), PAD, np.int64)
    for u in range(items.shape[0]):
        r = items[u][(items[u] != PAD) & ~np.isin(items[u], mask[u].indices)][:k]
        out[u, : len(r)] = r
    return out


def main() -> None:
    ds = load_dataset("movielens-100k")
    split = random_split_by_user(ds.interactions, seed=2020)
    td = TrainData(ds, split.train)
    test = interactions_csr(split.test, ds.n_users, ds.n_items)
    valid = interactions_csr(split.valid, ds.n_users, ds.n_items)
    users = np.arange(ds.n_users)
    res, batches = {}, []
    for name in CHANNELS:
        ch = RECALL_CHANNELS.build(name)
        t0 = time.perf_counter()
        ch.fit(td)
        t1 = time.perf_counter()
        b = ch.recall(users, 500)
        t2 = time.perf_counter()
        batches.append(b)
        m = ranking_metrics(b.items, test, (10, 200, 500))
        rb = ranking_metrics(mask_rows(b.items, valid, 200), test, (10,))
        res[name] = {"fit_s": round(t1 - t0, 2), "recall_all_users_500_s": round(t2 - t1, 3),
                     "R@10": round(m["recall@10"], 4), "NDCG@10": round(m["ndcg@10"], 4),
                     "R@200": round(m["recall@200"], 4), "R@500": round(m["recall@500"], 4),
                     "recbole_R@10": round(rb["recall@10"], 4), "recbole_NDCG@10": round(rb["ndcg@10"], 4)}
    t0 = time.perf_counter()
    items, lengths, *_ = snake_merge_arrays(batches, None, CHANNELS, 500)
    t1 = time.perf_counter()
    m = ranking_metrics(items, test, (500,))
    res["merged"] = {"R@500": round(m["recall@500"], 4), "channels": CHANNELS,
                     "merge_all_users_s": round(t1 - t0, 3), "mean_len": float(lengths.mean())}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
