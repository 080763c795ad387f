"""Sequence, multi-task and multi-scenario rankers, measured against peers in the same run.

Part "ml100k": the CTR protocol of eval/ctr.py (label rating ≥ 4, RecBole features, global
0.8/0.1/0.1 split, early stopping on valid AUC) for DIN, DIEN, SIM with their configs/ctr/*.yaml
(user's recent positive items + first genre), next to DeepFM without sequences.

Part "synthetic": the synthetic world's impressions with two labels, click and like (like
implies click); features age_band, gender, region, tags, author (+ ids); domain = region.
MMoE, PLE, ESMM, PEPNet train both tasks at once; DeepFM trains one model per task (peer);
STAR and DeepFM score click per region.

    .venv/bin/python bench/ctr_seq_multitask.py --part all --threads 1

Part "ml100k_multitask": the multi-task CTR protocol of eval/ctr.py on ml-100k (same split,
shipped features and early stopping as part "ml100k"), tasks ctr = rating ≥ 4 and like =
rating = 5 (like ⇒ ctr), domain = the user's gender. MMoE, PLE, ESMM, PEPNet train both tasks
at once (early stopping on the mean valid AUC); DeepFM and STAR train one model per task (the
DeepFM pair is the peer); DCNv2 trains "ctr" only and must reproduce the single-task zoo figure.

    .venv/bin/python bench/ctr_seq_multitask.py --part ml100k_multitask --threads 1

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np
import torch

from funnelrec.core.registry import RANKERS
from funnelrec.data import TrainData, load_dataset
from funnelrec.data.splits import random_split_global
from funnelrec.eval.ctr import evaluate_ctr, evaluate_ctr_multitask, load_ctr_config, predict
from funnelrec.eval.metrics import auc, logloss
from funnelrec.features.encoder import FeatureEncoder, FeatureEncoderConfig
from funnelrec.models.ranking.common import build_ranker, load_all
from funnelrec.train.losses import bce_loss, multitask_bce
from funnelrec.train.trainer import Trainer, TrainerConfig

TASKS = ("click", "like")


def part_ml100k(models: list[str], threads: int, epochs: int | None) -> dict:
    ds = load_dataset("movielens-100k")
    out = {}
    for m in models:
        cfg = load_ctr_config(m)
        trainer = {**cfg.get("trainer", {}), "num_threads": threads}
        if epochs:
            trainer["epochs"] = epochs
        r = evaluate_ctr(ds, m, {**cfg, "trainer": trainer})
        out[m] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "model"}
        print(m, out[m], flush=True, file=sys.stderr)
    return out


def part_ml100k_multitask(args) -> dict:
    ds = load_dataset("movielens-100k")
    tasks = tuple(t for t in args.tasks.split(",") if t)
    out: dict = {"tasks": list(tasks), "domain": args.domain}
    for m in args.mt_models:
        cfg = load_ctr_config(m)
        trainer = {**cfg.get("trainer", {}), "num_threads": args.threads}
        if args.epochs:
            trainer["epochs"] = args.epochs
        run_tasks = ("ctr",) if m in args.ctr_only else tasks
        r = evaluate_ctr_multitask(ds, m, run_tasks, {**cfg, "trainer": trainer}, domain=args.domain)
        for block in r["tasks"].values():
            block["train_samples_per_s"] = round(block["train_samples_per_s"])
        out[m] = {t: {k: (round(v, 4) if isinstance(v, float) else
                          {d: round(a, 4) for d, a in v.items()} if isinstance(v, dict) else v)
                      for k, v in block.items()} for t, block in r["tasks"].items()}
        out[m]["prep_seconds"] = round(r["prep_seconds"], 1)
        out.setdefault("domains", r["domains"])
        print(m, out[m], flush=True, file=sys.stderr)
    return out


def synthetic_tensors(args) -> tuple[dict, dict, dict, object, int]:
    ds = load_dataset("synthetic", n_users=args.users, n_items=args.items, n_interactions=args.interactions,
                      seed=0)
    split = random_split_global(ds.interactions, seed=2020)
    fcfg = FeatureEncoderConfig(user_columns=("age_band", "gender", "region"), item_columns=("tags", "author"),
                                multi_width=3, label_column="click", label_threshold=None)
    enc = FeatureEncoder(fcfg).fit(TrainData(ds, split.train))
    regions = ds.users["region"].to_numpy()
    names, region_code = np.unique(regions, return_inverse=True)

    def tensors(part):
        t = enc.encode(part)
        t["label_click"] = t.pop("label")
        t["label_like"] = torch.from_numpy(part["like"].to_numpy().astype(np.float32))
        t["domain"] = torch.from_numpy(region_code[part["user_idx"].to_numpy()].astype(np.int64))
        return t

    return tensors(split.train), tensors(split.valid), tensors(split.test), enc.spec, len(names)


def train_eval(name, spec, tasks, train, valid, test, tcfg, config=None) -> dict:
    torch.manual_seed(tcfg.seed)
    net = build_ranker(name, spec, config or load_ctr_config(name).get("model", {}))
    if tasks == ("ctr",):
        loss = bce_loss(label_key="_label")
        heads = {"ctr": valid["_label"]}
    else:
        loss = multitask_bce({t: 1.0 for t in tasks})
        heads = {t: valid["label_" + t] for t in tasks}

    def validate(m):
        return float(np.mean([auc(y.numpy(), predict(m, valid, t)) for t, y in heads.items()]))

    res = Trainer(tcfg).fit(net, loss, train, validate=validate)
    out = {"epochs": res.epochs, "train_samples_per_s": round(res.samples_per_s), "train_seconds":
           round(res.train_seconds, 1)}
    for t in (heads if tasks != ("ctr",) else ("ctr",)):
        y = (test["_label"] if t == "ctr" else test["label_" + t]).numpy()
        p = predict(net, test, t)
        out[f"auc_{t}"] = round(auc(y, p), 4)
        out[f"logloss_{t}"] = round(logloss(y, p), 4)
        if "domain" in test:
            dom = test["domain"].numpy()
            per = [auc(y[dom == d], p[dom == d]) for d in np.unique(dom)
                   if 0 < y[dom == d].sum() < (dom == d).sum()]
            out[f"mean_domain_auc_{t}"] = round(float(np.mean(per)), 4)
    return out


def part_synthetic(args) -> dict:
    train, valid, test, spec, n_regions = synthetic_tensors(args)
    tcfg = TrainerConfig(epochs=args.epochs or 10, batch_size=2048, lr=1e-3, patience=2,
                         num_threads=args.threads, seed=2020)
    out: dict = {"n_train": len(train["sparse"]), "n_test": len(test["sparse"]), "n_domains": n_regions,
                 "click_rate": round(float(train["label_click"].mean()), 4),
                 "like_rate": round(float(train["label_like"].mean()), 4)}
    two = dataclasses.replace(spec, tasks=TASKS, n_domains=n_regions)
    one = dataclasses.replace(spec, tasks=("ctr",), n_domains=n_regions)
    for t in TASKS:  # peer: one DeepFM per task
        if "deepfm" in RANKERS:
            lab = {k: {**d, "_label": d["label_" + t]} for k, d in (("tr", train), ("va", valid), ("te", test))}
            r = train_eval("deepfm", one, ("ctr",), lab["tr"], lab["va"], lab["te"], tcfg)
            out[f"deepfm_{t}"] = r
            print(f"deepfm_{t}", r, flush=True, file=sys.stderr)
    for m in args.synthetic_models:
        if m == "star":
            lab = {k: {**d, "_label": d["label_click"]} for k, d in (("tr", train), ("va", valid), ("te", test))}
            r = train_eval(m, one, ("ctr",), lab["tr"], lab["va"], lab["te"], tcfg)
        else:
            r = train_eval(m, two, TASKS, train, valid, test, tcfg)
        out[m] = r
        print(m, r, flush=True, file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("ml100k", "synthetic", "ml100k_multitask", "all"), default="all")
    ap.add_argument("--mt-models", default="deepfm,dcnv2,mmoe,ple,esmm,star,pepnet",
                    help="models of part ml100k_multitask")
    ap.add_argument("--ctr-only", default="dcnv2", help="models of part ml100k_multitask run on 'ctr' only")
    ap.add_argument("--tasks", default="ctr,like")
    ap.add_argument("--domain", default="gender", help="users column used as scenario (ml100k_multitask)")
    ap.add_argument("--ml-models", default="deepfm,din,dien,sim")
    ap.add_argument("--synthetic-models", default="mmoe,ple,esmm,pepnet,star")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=2_000)
    ap.add_argument("--interactions", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=0, help="override max epochs (0 = config)")
    args = ap.parse_args()
    args.synthetic_models = [m for m in args.synthetic_models.split(",") if m]
    args.mt_models = [m for m in args.mt_models.split(",") if m]
    args.ctr_only = {m for m in args.ctr_only.split(",") if m}
    load_all()
    t0 = time.perf_counter()
    result: dict = {"threads": args.threads}
    if args.part in ("ml100k", "all"):
        models = [m for m in args.ml_models.split(",") if m and m in RANKERS]
        result["ml100k"] = part_ml100k(models, args.threads, args.epochs or None)
    if args.part in ("synthetic", "all"):
        result["synthetic"] = part_synthetic(args)
        result["synthetic"]["world"] = {"users": args.users, "items": args.items,
                                        "interactions": args.interactions}
    if args.part == "ml100k_multitask":  # not in "all": its own table (docs/BENCHMARKS.md)
        result["ml100k_multitask"] = part_ml100k_multitask(args)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
