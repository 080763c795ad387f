"""Variants of one funnel config's `rank:` section on ml-100k, RecBole protocol (recbole-rs-811),
each trained on the same channels and label sets per seed and scored side by side — the A/B of a
ranker change over several seeds (docs/BENCHMARKS.md, Session 6). A variant is a mapping of
`rank:` keys to override; "_folds": k trains on the first 1 + k label sets (the builder makes
--max-folds of them). Prints one JSON line per (seed, variant), then one JSON object.

Usage: .venv/bin/python bench/funnel_variants.py --variants '{"base": {}, "bag5": {"ensemble": 5}}'
           [--config configs/funnel/ml100k.yaml] [--seeds 2020,2021,2022] [--max-folds 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "funnel" / "ml100k.yaml"))
    ap.add_argument("--seeds", default="2020,2021,2022")
    ap.add_argument("--variants", required=True, help='JSON {name: {rank key: value}}')
    ap.add_argument("--max-folds", type=int, default=None, help="label folds built (default: the config's)")
    args = ap.parse_args()
    variants = json.loads(args.variants)
    ds = load_dataset("movielens-100k")
    base = FunnelConfig.load(Path(args.config))
    folds = base.rank.label_folds if args.max_folds is None else args.max_folds
    built = dataclasses.replace(base, rank=dataclasses.replace(base.rank, label_folds=folds))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out: dict = {"config": args.config, "seeds": seeds, "loadavg_start": list(os.getloadavg()),
                 "machine": "2 cores shared with other sessions", "variants": {}, "ease_channel_ndcg@10": []}
    runs: dict[str, list[dict]] = {n: [] for n in variants}
    for seed in seeds:
        split = random_split_by_user(ds.interactions, seed=seed)
        builder = FunnelBuilder(built)
        ch = builder.fit(ds, split.train)
        sets = builder.label_sets(ds, split.train, split.valid, ch.channels_)
        for name, ov in variants.items():
            ov = dict(ov)
            n_folds = ov.pop("_folds", base.rank.label_folds)
            if n_folds > folds:
                raise SystemExit(f"variant {name}: _folds {n_folds} > --max-folds {folds}")
            rank = dataclasses.replace(base.rank, **{k: tuple(v) if isinstance(v, list) else v for k, v in ov.items()})
            cfg = dataclasses.replace(base, rank=rank)
            t0 = time.perf_counter()
            r = CandidateRanker(rank).fit(ds, split.train, sets[: 1 + n_folds])
            fit_s = time.perf_counter() - t0
            rep = evaluate_funnel(ds, cfg, fitted=(Funnel(cfg, ch.dataset_, ch.channels_, ch.stats_, r), split))
            row = {"seed": seed, "variant": name, **rep["funnel"],
                   "valid_ndcg@10": [m.best_score for m in r.member_results_],
                   "epochs": [m.epochs for m in r.member_results_], "samples": r.n_examples_,
                   "ranker_fit_s": round(fit_s, 1), "loadavg": list(os.getloadavg())}
            runs[name].append(row)
            if name == next(iter(variants)) and "ease" in rep["channels"]:
                out["ease_channel_ndcg@10"].append(rep["channels"]["ease"]["ndcg@10"])
            print(json.dumps(row), flush=True)
    for name, rs in runs.items():
        nd = np.array([x["ndcg@10"] for x in rs])
        out["variants"][name] = {"overrides": variants[name], "ndcg@10_mean": float(nd.mean()),
                                 "ndcg@10_min": float(nd.min()), "ndcg@10_max": float(nd.max()), "runs": rs}
    out["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
