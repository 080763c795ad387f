"""Offline evaluation of the funnel on the RecBole protocol (`recbole-rs-811`).

Split each user's interactions 0.8/0.1/0.1 after a seeded shuffle; channels and ranker are fitted
on train (the ranker's labels are the validation split); for the test, every item of the user's
train and validation interactions is excluded and the positives are the user's test items.
Reports every channel (R@10, NDCG@10, R@200), the merged candidate set (its recall at the size
handed to ranking) and the funnel's top-10 — all through the same `Funnel` that serving runs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.types import PAD, CandidateBatch, RequestState
from funnelrec.data.dataset import Dataset, interactions_csr
from funnelrec.data.splits import Split, random_split_by_user
from funnelrec.eval.metrics import ranking_metrics
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel


def drop_excluded(batch: CandidateBatch, exclude: sp.csr_matrix, users: np.ndarray, n: int) -> np.ndarray:
    """(U, n) items of `batch` with each user's excluded items removed (order kept, PAD-filled)."""
    items = batch.items
    U = items.shape[0]
    keys_ex = np.repeat(np.arange(U), np.diff(exclude[users].indptr)) * exclude.shape[1] + exclude[users].indices
    keys = np.arange(U)[:, None] * exclude.shape[1] + np.maximum(items, 0)
    keep = (items != PAD) & ~np.isin(keys, keys_ex)
    out = np.full((U, n), PAD, np.int64)
    # stable compaction of kept items to the left
    order = np.argsort(~keep, axis=1, kind="stable")
    compact = np.take_along_axis(items, order, 1)
    kept = np.take_along_axis(keep, order, 1)
    compact[~kept] = PAD
    w = min(n, compact.shape[1])
    out[:, :w] = compact[:, :w]
    return out


def exclude_rows(exclude: sp.csr_matrix, users: np.ndarray) -> list[np.ndarray]:
    """Per user of `users`, the item indices of its row of `exclude` (`RequestState.exclude`)."""
    return [exclude.indices[exclude.indptr[u]: exclude.indptr[u + 1]] for u in np.asarray(users).tolist()]


def prerank_recall(funnel: Funnel, pre, users: np.ndarray, top: int = 50) -> dict[str, float]:
    """How much of the fine ranker's top-`top` survives the pre-ranker `pre`'s cut (mean over
    users), next to a random cut of the same size and the merge-order cut."""
    merged = funnel.candidates(users)
    fused = [f for f, _ in funnel.rank_tasks(merged, users)]
    pre_s = pre.score(users, merged, funnel.item_log_pop_, funnel.user_log_act_)
    got, rnd, mrg = [], [], []
    for f, p in zip(fused, pre_s):
        n = len(f)
        if n <= pre.keep:
            continue
        best = set(np.argsort(-f, kind="stable")[:top].tolist())
        kept = set(pre.keep_positions(p).tolist())
        got.append(len(best & kept) / len(best))
        rnd.append(pre.keep / n)
        mrg.append(len(best & set(range(pre.keep))) / len(best))
    return {f"recall_of_fine_top{top}": float(np.mean(got)) if got else 1.0,
            "random_cut": float(np.mean(rnd)) if rnd else 1.0,
            "merge_order_cut": float(np.mean(mrg)) if mrg else 1.0, "requests": len(got)}


def fit_on_protocol(dataset: Dataset, config: FunnelConfig | None = None, seed: int = 2020,
                    progress: bool = False) -> tuple[Funnel, Split]:
    """The funnel fitted on the protocol's train split, its ranker labelled by the valid split —
    by a seeded sample of `data.label_users` of its users when the config caps them. `funnelrec
    train` fits through here too, so the funnel it saves is the one `evaluate funnel` scores."""
    config = config or FunnelConfig()
    # an impression is exposure: neither fitted (FunnelBuilder.fit) nor a test positive (data/source.py)
    split = random_split_by_user(config.labels.consumptions(dataset.interactions), seed=seed)
    labels = split.valid
    cap = config.data.label_users
    users = labels["user_idx"].unique().sort()
    if cap and users.len() > cap:  # a seeded sample of the label users bounds the ranker's fit
        keep = np.random.default_rng(seed).choice(users.to_numpy(), size=cap, replace=False)
        labels = labels.filter(pl.col("user_idx").is_in(keep))
    return FunnelBuilder(config).fit(dataset, split.train, labels=labels, progress=progress), split


def evaluate_funnel(dataset: Dataset, config: FunnelConfig | None = None, seed: int = 2020,
                    progress: bool = False, channel_k: int = 200,
                    fitted: tuple[Funnel, Split] | None = None) -> dict[str, Any]:
    config = config or FunnelConfig()
    t0 = time.perf_counter()
    funnel, split = fitted or fit_on_protocol(dataset, config, seed, progress)
    fit_s = time.perf_counter() - t0
    nu, ni = dataset.n_users, dataset.n_items
    valid = interactions_csr(split.valid, nu, ni)
    test = interactions_csr(split.test, nu, ni)
    users = np.unique(split.test["user_idx"].to_numpy())
    extra = int(np.diff(valid.indptr).max()) if valid.nnz else 0
    report: dict[str, Any] = {"protocol": split.protocol, "dataset": dataset.name, "channels": {}}
    total = config.recall.merge.total
    for spec in config.recall.channels:
        ch = funnel.channels_[spec.name]
        # each channel alone at the merged set's size too: does the merge beat its best part?
        k = max(channel_k, 10, total)
        batch = ch.recall(users, k + extra)
        top = drop_excluded(batch, valid, users, k)
        m = ranking_metrics(top, test, ks=tuple(dict.fromkeys((10, channel_k, total))), rows=users)
        report["channels"][spec.name] = {
            "recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"], f"recall@{channel_k}": m[f"recall@{channel_k}"],
            f"recall@{total}": m[f"recall@{total}"],
        }
    merged = funnel.candidates(users, state=RequestState(exclude=exclude_rows(valid, users)))
    cand = np.full((len(users), total), PAD, np.int64)
    for r, m in enumerate(merged):
        cand[r, : len(m)] = m.items[:total]
    mm = ranking_metrics(cand, test, ks=(total,), rows=users)
    report["merged"] = {"size": total, f"recall@{total}": mm[f"recall@{total}"],
                        "mean_candidates": float(np.mean([len(m) for m in merged]))}
    items, _ = funnel.recommend_batch(users, 10, exclude=valid)
    fm = ranking_metrics(items, test, ks=(10,), rows=users)
    report["funnel"] = {k: fm[k] for k in ("recall@10", "ndcg@10", "hit@10", "mrr@10")}
    report["users"] = int(fm["users"])
    report["seconds"] = {"fit": fit_s, "total": time.perf_counter() - t0, **{f"fit_{k}": v for k, v in funnel.fit_seconds_.items()}}
    return report
