"""Two-tower vector recall on MovieLens-100k, RecBole protocol, one entry per loss.

Split: `random_split_by_user` (RS 0.8/0.1/0.1, seed 2020). Each loss trains with early stopping
on the validation NDCG@10 (best epoch restored); test positives are the test items, ranked over
all items except the user's train items (`test`) and, as RecBole's full-sort evaluator does,
except train + valid items (`test_recbole`). Prints one JSON object.

    .venv/bin/python bench/two_tower.py                       # the three losses, tuned settings
    .venv/bin/python bench/two_tower.py --losses softmax --set '{"model": {"temperature": 0.1}}'
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--losses", default="pointwise,bpr,softmax")
    ap.add_argument("--set", default="{}", help="JSON overrides applied to every loss's config")
    args = ap.parse_args()
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
