"""Funnel NDCG@10 of every fine ranker config on MovieLens-100k, RecBole protocol (recbole-rs-811:
a per-user random split 0.8/0.1/0.1, full ranking over the items outside the user's train and
valid): configs/funnel/ml100k_<ranker>.yaml — the same channels and merge as
configs/funnel/ml100k.yaml (the "lr" row), only the `rank:` and `fusion:` sections differ — so the
channels and the ranker's label sets are fitted once per seed and each ranker trained on them, as
`funnelrec train --config configs/funnel/ml100k_<ranker>.yaml` would train it. Also the EASE
channel alone (the ranker's own contribution is funnel − EASE). Prints one JSON object.

Usage: .venv/bin/python bench/funnel_rankers.py [--rankers lr,din,…] [--seeds 2020]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from funnelrec.data import load_dataset
from funnelrec.data.splits import random_split_by_user
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.pipeline.offline import evaluate_funnel
from funnelrec.train.candidate_ranker import CandidateRanker

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "funnel"
RANKERS = "lr,din,dien,sim,mimn,star,pepnet,gbdt_lr,mmoe,ple,watch_time,deepfm,deepfm_bag"


def config_of(name: str) -> Path:
    return CONFIGS / ("ml100k.yaml" if name == "lr" else f"ml100k_{name}.yaml")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rankers", default=RANKERS)
    ap.add_argument("--seeds", default="2020")
    args = ap.parse_args()
    names = [n for n in args.rankers.split(",") if n]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    ds = load_dataset("movielens-100k")
    base = FunnelConfig.load(config_of("lr"))
    cfgs = {n: FunnelConfig.load(config_of(n)) for n in names}
    for n, c in cfgs.items():  # one channel fit serves all: the recall sections must agree
        if c.recall != base.recall:
            raise SystemExit(f"{config_of(n)}: its recall section differs from {config_of('lr')}")
    out: dict = {"protocol": "recbole-rs-811", "dataset": "movielens-100k", "seeds": seeds,
                 "machine": f"{platform.machine()}, 2 cores shared with other sessions",
                 "loadavg_start": list(os.getloadavg()), "rankers": {}}
    per: dict[str, list[dict]] = {n: [] for n in names}
    ease: list[float] = []
    for seed in seeds:
        split = random_split_by_user(ds.interactions, seed=seed)
        t0 = time.perf_counter()
        builder = FunnelBuilder(base)
        channels_only = builder.fit(ds, split.train)  # no labels: the channels alone
        sets = builder.label_sets(ds, split.train, split.valid, channels_only.channels_)
        setup_s = time.perf_counter() - t0
        for n in names:
            cfg = cfgs[n]
            t1 = time.perf_counter()
            try:
                ranker = CandidateRanker(cfg.rank).fit(ds, split.train, sets)
            except Exception as e:  # recorded, not hidden: the table shows the error
                per[n].append({"seed": seed, "ndcg@10": float("nan"), "error": f"{type(e).__name__}: {e}"})
                print(json.dumps({"ranker": n, **per[n][-1]}), flush=True)
                continue
            fit_s = time.perf_counter() - t1
            funnel = Funnel(cfg, channels_only.dataset_, channels_only.channels_, channels_only.stats_, ranker)
            r = evaluate_funnel(ds, cfg, fitted=(funnel, split))
            per[n].append({"seed": seed, **r["funnel"], "valid_ndcg@10": ranker.train_result_.best_score,
                           "ranker_fit_s": round(fit_s, 1), "epochs": ranker.train_result_.epochs,
                           "samples": ranker.n_examples_})
            if len(ranker.member_results_) > 1:  # rank.ensemble: each member's own validation users
                per[n][-1]["members_valid_ndcg@10"] = [m.best_score for m in ranker.member_results_]
                per[n][-1]["members_epochs"] = [m.epochs for m in ranker.member_results_]
            if n == names[0] and "ease" in r["channels"]:
                ease.append(r["channels"]["ease"]["ndcg@10"])
            print(json.dumps({"ranker": n, **per[n][-1]}), flush=True)
        out.setdefault("setup_s", []).append(round(setup_s, 1))
    for n in names:
        nd = np.array([p["ndcg@10"] for p in per[n]])
        out["rankers"][n] = {"config": str(config_of(n).relative_to(CONFIGS.parents[1])),
                             "ndcg@10_mean": float(nd.mean()), "ndcg@10_std": float(nd.std()),
                             "ndcg@10_min": float(nd.min()), "ndcg@10_max": float(nd.max()),
                             "runs": per[n]}
    out["ease_channel_ndcg@10"] = ease
    if ease:
        out["ease_channel_ndcg@10_mean"] = float(np.mean(ease))
    out["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
