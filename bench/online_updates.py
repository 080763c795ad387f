"""Online model updates at MovieLens-100k (issue #10 item 4, model side), one JSON object.

World (the one of tests/online/test_updates.py): the funnel of WORLD_CONFIG (itemCF 100, hot 50,
a small two-tower 50; LR ranker, 3 epochs) fitted on the first 50 % of time (its ranker's labels:
the last 10 % of that, by time). Samples: for each chosen user active after the cut, the funnel's
top-30 as impressions, click = rated in the first half of the user's later rows, plus the other
first-half ratings as clicks no channel recalled (`online/samples.py:samples_from_interactions`);
holdout: the same with the second half, first-half items left out.

- timing: `RankerUpdater.update` (features through the funnel's recall path + FID admission +
  FTRL steps, no guardrail) and `VectorUpdater.update` (two-tower fine-tune on the clicks +
  re-embedding + index rebuild) on the samples of ALL users active after the cut, as seconds
  and seconds per 10k samples (the vector figure per 10k clicks, what it trains on);
- quality (`--seeds`): per seed s (users drawn with seed s out of `--users`, ranker seed 2020 + s)
  the holdout AUC (recalled impressions: what the ranker orders when serving) of the static and
  the updated ranker — the measurement behind the margin of test_online_update_beats_static.

    FUNNELREC_THREADS=1 python bench/online_updates.py [--seeds 0 1 2] [--users 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import polars as pl

from funnelrec.data import load_dataset
from funnelrec.data.splits import temporal_split
from funnelrec.eval.metrics import auc
from funnelrec.online.guardrail import ranker_logits
from funnelrec.online.samples import later_halves, rank_samples, samples_from_interactions
from funnelrec.online.updates import RankerUpdateConfig, RankerUpdater, VectorUpdateConfig, VectorUpdater
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig

K = 30
WORLD_CONFIG = {
    "recall": {"channels": [{"name": "itemcf", "n": 100}, {"name": "hot", "n": 50},
                            {"name": "vector", "n": 50, "params": {
                                "epochs": 2, "num_threads": 1, "item_columns": ["genres", "directors", "release_year"],
                                "user_columns": ["age_band", "gender", "occupation", "region"],
                                "model": {"embedding_dim": 16, "user_hidden": [32], "item_hidden": [32],
                                          "output_dim": 16}}}],
               "merge": {"total": 150, "quotas": {"hot": 40}, "priority": ["itemcf", "vector", "hot"]}},
    "rank": {"epochs": 3}}


def fit_world(dataset, seed: int):
    inter = dataset.interactions.sort("timestamp")
    t = inter["timestamp"]
    cut = int(t.min() + 0.5 * (t.max() - t.min()))
    fit_rows, rest = inter.filter(pl.col("timestamp") < cut), inter.filter(pl.col("timestamp") >= cut)
    cfg = dict(WORLD_CONFIG, rank={**WORLD_CONFIG["rank"], "seed": 2020 + seed})
    sp = temporal_split(fit_rows, (0.9, 0.1, 0.0))
    t0 = time.perf_counter()
    funnel = FunnelBuilder(FunnelConfig.from_dict(cfg)).fit(dataset, sp.train, labels=sp.valid)
    return funnel, rest, time.perf_counter() - t0


def world_samples(funnel, rest, users):
    first, second = later_halves(rest, users)
    shown = [r.items for r in funnel.run(users, k=K)]
    samples = samples_from_interactions(funnel, users, first, K, recommended=shown)
    holdout = samples_from_interactions(funnel, users, second, K, exclude=first, recommended=shown)
    return samples, holdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ds = load_dataset("movielens-100k")
    out: dict = {"dataset": ds.name, "threads": os.environ.get("FUNNELREC_THREADS"), "quality": []}
    for s in args.seeds:
        funnel, rest, fit_s = fit_world(ds, s)
        rng = np.random.default_rng(s)
        users = np.sort(rng.choice(rest["user_idx"].unique().to_numpy(), args.users, replace=False))
        samples, holdout = world_samples(funnel, rest, users)
        new = RankerUpdater().update(funnel, samples, holdout)["ranker"]
        hold = rank_samples(funnel, holdout, unrecalled="drop")
        y = hold.labels["click"]
        a0, a1 = auc(y, ranker_logits(funnel.ranker_, hold)), auc(y, ranker_logits(new, hold))
        out["quality"].append({"seed": s, "fit_s": round(fit_s, 2), "samples": samples.height,
                               "holdout_recalled": len(hold), "static_auc": round(a0, 4),
                               "updated_auc": round(a1, 4), "gain": round(a1 - a0, 4)})
        print(json.dumps(out["quality"][-1]), flush=True)
        if s != args.seeds[0]:
            continue
        # timing on every user active after the cut
        all_users = np.sort(rest["user_idx"].unique().to_numpy())
        big, big_hold = world_samples(funnel, rest, all_users)
        n_clicks = int(big["click"].sum())
        rt, vt = [], []
        for _ in range(args.repeats):
            up = RankerUpdater(RankerUpdateConfig())
            t0 = time.perf_counter()
            up.update(funnel, big, big_hold)
            rt.append(time.perf_counter() - t0)
            vu = VectorUpdater(VectorUpdateConfig(interval=0, epochs=2))
            t0 = time.perf_counter()
            vu.update(funnel, big, big_hold)
            vt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rank_samples(funnel, big)
        feat_s = time.perf_counter() - t0
        out["timing"] = {
            "samples": big.height, "clicks": n_clicks, "users": len(all_users),
            "ranker_update_s": [round(x, 3) for x in rt],
            "ranker_s_per_10k_samples": round(float(np.median(rt)) / big.height * 1e4, 3),
            "ranker_features_s": round(feat_s, 3),
            "vector_update_s": [round(x, 3) for x in vt],
            "vector_s_per_10k_clicks": round(float(np.median(vt)) / n_clicks * 1e4, 3),
            "vector_epochs": 2,
        }
    gains = [q["gain"] for q in out["quality"]]
    out["gain_min"], out["gain_mean"] = min(gains), round(float(np.mean(gains)), 4)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
