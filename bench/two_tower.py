"""Two-tower vector recall on MovieLens-100k, RecBole protocol, one entry per loss.

Split: `random_split_by_user` (RS 0.8/0.1/0.1, seed 2020). Each loss trains with early stopping
on the validation NDCG@10 (best epoch restored); test positives are the test items, ranked over
all items except the user's train items (`test`) and, as RecBole's full-sort evaluator does,
except train + valid items (`test_recbole`). Prints one JSON object.

    .venv/bin/python bench/two_tower.py                       # the three losses, tuned settings
    .venv/bin/python bench/two_tower.py --losses softmax --set '{"model": {"temperature": 0.1}}'

`--synthetic-steps N` instead times N training steps of the serving benchmark's vector channel
(bench/serving_synthetic.yaml: synthetic world 100k users × 1M items × 3M interactions, its
vector params) — forward, backward and optimizer step apart, after 2 warm-up steps — and
extrapolates one epoch; `--set '{"sparse_embeddings": false}'` gives the dense-gradient path.
Peak RSS is the process's (world included), so run one mode per process. `--profile` prints
torch.profiler's top operators of 5 steps to stderr.

    .venv/bin/python bench/two_tower.py --synthetic-steps 30
    .venv/bin/python bench/two_tower.py --synthetic-steps 30 --set '{"sparse_embeddings": false}'
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import polars as pl

from funnelrec.core.config import from_dict
from funnelrec.core.types import PAD
from funnelrec.data import load_dataset
from funnelrec.data.dataset import TrainData, interactions_csr
from funnelrec.data.splits import random_split_by_user
from funnelrec.eval.metrics import ranking_metrics
from funnelrec.recall.vector import VectorRecall, VectorRecallConfig

# settings chosen on the validation split (docs/BENCHMARKS.md)
TUNED: dict[str, dict] = {
    "pointwise": {"loss": "pointwise", "n_negatives": 3, "model": {"temperature": 0.1}},
    "bpr": {"loss": "bpr", "n_negatives": 1, "model": {"temperature": 0.1}},
    "softmax": {"loss": "softmax", "n_negatives": 0, "model": {"temperature": 0.1}},
}
COMMON = {"epochs": 30, "patience": 3, "num_threads": 1, "model": {"dropout": 0.2},
          "user_columns": ["user_id", "age_band", "gender", "occupation", "region"]}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def evaluate(ch: VectorRecall, ds, split) -> dict[str, dict[str, float]]:
    users = np.unique(split.test["user_idx"].to_numpy())
    test = interactions_csr(split.test, ds.n_users, ds.n_items)
    valid = interactions_csr(split.valid, ds.n_users, ds.n_items)
    extra = int(np.diff(valid.indptr).max())
    t0 = time.perf_counter()
    top = ch.recall(users, 200 + extra).items
    recall_s = time.perf_counter() - t0
    in_valid = np.asarray(valid[users[:, None], np.maximum(top, 0)].todense()).astype(bool) & (top != PAD)
    order = np.argsort(in_valid, axis=1, kind="stable")  # valid items to the back, order kept
    top_rb = np.take_along_axis(top, order, axis=1)[:, :200]
    out = {}
    for name, t in (("test", top[:, :200]), ("test_recbole", top_rb)):
        m = ranking_metrics(t, test, (10, 200), rows=users)
        out[name] = {k: round(m[k], 4) for k in ("recall@10", "ndcg@10", "hit@10", "recall@200")}
    out["recall_ms_per_user"] = round(1000 * recall_s / len(users), 3)
    return out


def synthetic_steps(n_steps: int, overrides: dict, profile: bool) -> dict:
    import resource
    from pathlib import Path

    import torch

    from funnelrec.core.config import load_yaml
    from funnelrec.train.trainer import setup_torch

    spec = load_yaml(Path(__file__).with_name("serving_synthetic.yaml"))
    params = next(c["params"] for c in spec["funnel"]["recall"]["channels"] if c["name"] == "vector")
    t0 = time.perf_counter()
    ds = load_dataset(spec["dataset"]["name"], **spec["dataset"]["params"])
    world_s = time.perf_counter() - t0
    cfg = from_dict(VectorRecallConfig, _merge(params, overrides))
    setup_torch(cfg.num_threads)
    t0 = time.perf_counter()
    t = VectorRecall(cfg).build_training(TrainData(ds, ds.interactions))
    setup_s = time.perf_counter() - t0
    model, train = t.model, t.epoch_tensors(0)
    opts = t.optimizers or [torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                             fused=True)]
    n = len(train["user"])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    B = cfg.batch_size
    model.train()
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}

    def step(k: int) -> None:
        idx = perm[(k * B) % n : (k * B) % n + B]
        batch = {key: v[idx] for key, v in train.items()}
        t0 = time.perf_counter()
        loss = t.objective(model, batch)
        t1 = time.perf_counter()
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        for o in opts:
            o.step()
        t3 = time.perf_counter()
        if k >= 2:
            for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[name].append(dt)

    for k in range(n_steps + 2):
        step(k)
    if profile:
        import sys

        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprof

        with tprof(activities=[ProfilerActivity.CPU]) as prof:
            for k in range(5):
                step(n_steps + 2 + k)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    per_step = np.sum([parts[k] for k in parts], axis=0)
    steps_per_epoch = -(-n // B)
    n_params = sum(p.numel() for p in model.parameters())
    return {"world": spec["dataset"]["params"], "vector_params": params, "overrides": overrides,
            "sparse_embeddings": cfg.sparse_embeddings, "parameters": n_params, "batch_size": B,
            "steps_timed": n_steps, "world_s": round(world_s, 1), "setup_s": round(setup_s, 1),
            "step_s_mean": round(float(per_step.mean()), 4), "step_s_median": round(float(np.median(per_step)), 4),
            **{f"{k}_s_mean": round(float(np.mean(v)), 4) for k, v in parts.items()},
            "steps_per_epoch": steps_per_epoch, "epoch_s_estimate": round(float(per_step.mean()) * steps_per_epoch, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "torch_threads": torch.get_num_threads(), "load_avg": [round(x, 2) for x in __import__("os").getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--losses", default="pointwise,bpr,softmax")
    ap.add_argument("--set", default="{}", help="JSON overrides applied to every loss's config")
    ap.add_argument("--synthetic-steps", type=int, default=0, help="time N steps at the 1M-item scale instead")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.synthetic_steps:
        print(json.dumps(synthetic_steps(args.synthetic_steps, json.loads(args.set), args.profile)))
        return
    ds = load_dataset("movielens-100k")
    split = random_split_by_user(ds.interactions, seed=2020)
    train = TrainData(ds, split.train)
    res: dict = {"dataset": "movielens-100k", "split": list(split.sizes()), "machine": platform.processor() or "cpu",
                 "overrides": json.loads(args.set), "losses": {}}
    for loss in args.losses.split(","):
        cfg = from_dict(VectorRecallConfig, _merge(_merge(COMMON, TUNED[loss]), json.loads(args.set)))
        t0 = time.perf_counter()
        ch = VectorRecall(cfg).fit(train, valid=split.valid)
        fit_s = time.perf_counter() - t0
        r = ch.train_result_
        entry = {"config": {"temperature": cfg.model.temperature, "n_negatives": cfg.n_negatives,
                            "sampler": cfg.negative_sampler, "lr": cfg.lr, "batch_size": cfg.batch_size},
                 "best_epoch": r.best_epoch + 1, "epochs_run": r.epochs, "valid_ndcg@10": round(r.best_score, 4),
                 "fit_s": round(fit_s, 1), "train_s": round(r.train_seconds, 1),
                 "samples_per_s": round(r.samples_per_s), "valid_curve": [round(h["valid"], 4) for h in r.history]}
        entry.update(evaluate(ch, ds, split))
        res["losses"][loss] = entry
        print(json.dumps({loss: entry}), flush=True, file=__import__("sys").stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    pl.Config.set_tbl_rows(5)
    main()
