"""A small served world for the console's browser tests and screenshots (bench/console_screenshots.py):
MovieLens-100k cut to its first users × items (real titles, genres, people), a funnel with every
stage the User page draws (five channels incl. Swing / EASE / vector, quotas, a pre-ranker that
cuts, an MMoE ranker with ctr + like fused, a genre-cap re-ranker) and a two-layer experiment
platform, plus `send_traffic`: recommend → impressions → clicks over real HTTP."""

from __future__ import annotations

import numpy as np
import polars as pl

CONFIG = {
    "recall": {"channels": [{"name": "itemcf", "n": 60}, {"name": "swing", "n": 40}, {"name": "ease", "n": 60},
                            {"name": "vector", "n": 40, "params": {"epochs": 1}}, {"name": "hot", "n": 30}],
               "merge": {"total": 120, "quotas": {"hot": 15, "swing": 25},
                         "priority": ["ease", "itemcf", "vector", "swing", "hot"]}},
    "rank": {"model": "mmoe", "tasks": ["ctr", "like"], "epochs": 1},
    "prerank": {"enabled": True, "keep": 50},
    "fusion": {"weights": {"ctr": 1.0, "like": 0.5}},
    "rerank": {"method": "cap", "column": "genres", "max_per_category": 3},
    "k": 10,
}

EXPERIMENTS = """
n_buckets: 1000
layers:
  - {name: recall, owns: ["recall."]}
  - {name: rerank, owns: ["rerank."]}
experiments:
  - name: hot_quota
    layer: recall
    buckets: [0, 1000]
    variants:
      - {name: control}
      - {name: hot_30, params: {recall.merge.quotas.hot: 30}}
  - name: genre_cap
    layer: rerank
    buckets: [0, 600]
    variants:
      - {name: control}
      - {name: cap_2, params: {rerank.max_per_category: 2}}
    ramp:
      schedule: [0.1, 0.3, 0.6]
      step: 1
"""


def tiny_ml100k(n_users: int = 150, n_items: int = 300):
    """(Dataset, split) of the first `n_users` users and `n_items` items of MovieLens-100k."""
    from funnelrec.data import load_dataset
    from funnelrec.data.dataset import Dataset
    from funnelrec.data.splits import random_split_by_user

    full = load_dataset("movielens-100k")
    keep_u = pl.col("user_id").cast(pl.Int64) <= n_users
    keep_i = pl.col("item_id").cast(pl.Int64) <= n_items
    inter = full.interactions.filter(keep_u & keep_i).drop("user_idx", "item_idx")
    ds = Dataset.build("ml100k-tiny", inter, full.schema, users=full.users.filter(keep_u).drop("user_idx"),
                       items=full.items.filter(keep_i).drop("item_idx"))
    return ds, random_split_by_user(ds.interactions, seed=2020)


def fit_funnel(ds, split):
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig

    return FunnelBuilder(FunnelConfig.from_dict(CONFIG)).fit(ds, split.train, labels=split.valid)


def platform(tmp_dir):
    from funnelrec.experiments import ExperimentPlatform

    path = tmp_dir / "experiments.yaml"
    path.write_text(EXPERIMENTS)
    return ExperimentPlatform.from_yaml(path)


def send_traffic(url: str, users: list[str], seed: int = 0, headers: dict | None = None) -> dict[str, int]:
    """Each user: one /recommend, impressions of its 10 items, a click on each with probability
    0.25 (0.4 in hot_quota's hot_30 arm: a real effect for the page to find), over HTTP."""
    import httpx

    rng = np.random.default_rng(seed)
    sent = {"requests": 0, "impressions": 0, "clicks": 0}
    with httpx.Client(base_url=url, headers=headers or {}, timeout=30) as c:
        for u in users:
            r = c.post("/recommend", json={"user_id": u, "k": 10})
            r.raise_for_status()
            body = r.json()
            sent["requests"] += 1
            arm = body["experiments"].get("recall", {}).get("variant")
            p = 0.4 if arm == "hot_30" else 0.25
            items = [it["item_id"] for it in body["items"]]
            events = [{"item_id": i, "type": "impression"} for i in items]
            events += [{"item_id": i, "type": "click"} for i in items if rng.random() < p]
            c.post("/feedback", json={"request_id": body["request_id"], "user_id": u, "events": events}
                   ).raise_for_status()
            sent["impressions"] += len(items)
            sent["clicks"] += len(events) - len(items)
    return sent
