"""Quality of the whole funnel on MovieLens-100k, RecBole protocol (recbole-rs-811, seed 2020):
each channel, the merged set, and the funnel's top-10 for several fine rankers swapped by config
(configs/funnel/ml100k.yaml + overrides), plus the pre-ranker's recall of the fine top-50 on
held-out requests. Prints one JSON object.

Usage: .venv/bin/python bench/funnel_quality.py [--rankers lr,deepfm,dcnv2] [--prerank-keep 100]
"""

from __future__ import annotations

import argparse
import json
import time

from funnelrec.core.config import load_yaml
from funnelrec.data import load_dataset
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.offline import evaluate_funnel, fit_on_protocol, prerank_recall

CONFIG = "configs/funnel/ml100k.yaml"
RANKER_PARAMS = {
    "lr": {},
    "deepfm": {"params": {"embedding_dim": 8, "hidden": [64]}, "lr": 0.002},
    "dcnv2": {"params": {"embedding_dim": 8, "hidden": [64], "cross_layers": 2}, "lr": 0.002},
    "mmoe": {"params": {"embedding_dim": 8, "n_experts": 2, "expert_hidden": [64], "tower_hidden": [16]},
             "lr": 0.002, "tasks": ["ctr", "like"]},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rankers", default="lr,deepfm,dcnv2")
    ap.add_argument("--prerank-keep", type=int, default=100)
    args = ap.parse_args()
    ds = load_dataset("movielens-100k")
    base = load_yaml(CONFIG)
    out: dict = {"config": CONFIG, "funnel": {}}
    for name in filter(None, args.rankers.split(",")):
        d = {**base, "rank": {**base["rank"], "model": name, **RANKER_PARAMS.get(name, {})}}
        t0 = time.perf_counter()
        fitted = fit_on_protocol(ds, FunnelConfig.from_dict(d))
        fit_s = time.perf_counter() - t0
        r = evaluate_funnel(ds, FunnelConfig.from_dict(d), fitted=fitted)
        out["channels"], out["merged"] = r["channels"], r["merged"]
        out["funnel"][name] = {**r["funnel"], "valid_ndcg@10": fitted[0].ranker_.train_result_.best_score,
                               "fit_s": round(fit_s, 1),
                               "fit_ranker_s": round(r["seconds"]["fit_ranker"], 1)}
    # pre-ranker distilled from the default (lr) ranker, cut to --prerank-keep
    d = {**base, "prerank": {"enabled": True, "keep": args.prerank_keep}}
    funnel, _ = fit_on_protocol(ds, FunnelConfig.from_dict(d))
    out["prerank"] = {"keep": args.prerank_keep, "fit_s": round(funnel.fit_seconds_["prerank"], 1),
                      **prerank_recall(funnel, funnel.prerank_, funnel.ranker_.valid_users_, top=50)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
