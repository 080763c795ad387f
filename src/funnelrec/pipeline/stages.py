"""The funnel's request stages after merge, each in one place: filter (exclude + exposure),
pre-rank cut, rank (score → fuse → re-rank). No stage imports the `Funnel`; the funnel calls them.

- `filter_candidates`: removes each user's excluded items and the items its exposure filter says
  were shown, between merge and pre-rank (serving and offline evaluation alike).
- `rank_stage`: the fine ranker's per-task logits, fused by `fuse` (models/ranking/fusion.py:
  fused = Σ_t w_t · logit_t, a task without a weight counts 1), then the re-ranker.
- re-rankers, registered in `RERANKERS` ("none", "cap", "mmr"):
- `cap_rerank`: greedy walk down the fused order, skipping an item once any of its category
  values already has `max_per_category` items picked; skipped items follow in fused order.
- `mmr_rerank`: maximal marginal relevance, pick argmax λ·rel(i) − (1−λ)·max_{j∈picked} sim(i, j)
  with rel = min-max scaled fused score and sim = Jaccard of the items' category sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from funnelrec.core.registry import RERANKERS
from funnelrec.core.types import ExposureSet, MergedCandidates
from funnelrec.models.ranking.fusion import fuse

__all__ = ["fuse", "filter_candidates", "rank_stage", "rerank", "category_matrix", "cap_rerank", "mmr_rerank"]


def filter_candidates(merged: list[MergedCandidates], item_keys: np.ndarray,
                      exclude: Sequence[np.ndarray | None] | None = None,
                      exposure: Sequence[ExposureSet | None] | None = None) -> tuple[list[MergedCandidates], list[np.ndarray]]:
    """Each row's candidates minus its `exclude` items (dense indices) and minus the items its
    exposure view contains (tested by item key); returns (kept sets, removed item indices)."""
    out, removed = [], []
    for r, m in enumerate(merged):
        drop = np.zeros(len(m), bool)
        if len(m):
            ex = None if exclude is None else exclude[r]
            if ex is not None and len(ex):
                drop |= np.isin(m.items, np.asarray(ex, dtype=np.int64))
            view = None if exposure is None else exposure[r]
            if view is not None:
                drop |= np.asarray(view.contains(item_keys[m.items]), dtype=bool)
        removed.append(m.items[drop])
        out.append(m.subset(~drop) if drop.any() else m)
    return out, removed


def rank_stage(ranker: Any, merged: list[MergedCandidates], users: np.ndarray, item_log_pop: np.ndarray,
               user_log_act: np.ndarray, weights: dict[str, float], fresh: Sequence | None = None,
               ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per user: (fused score, {task: logit}) of its candidates; merge order without a ranker.
    `fresh` (one item-index array or None per user): items consumed since the fit, which the
    ranker's match features add to the fit-time history."""
    if ranker is None:
        return [(-np.arange(len(m), dtype=np.float32), {}) for m in merged]
    if fresh is None or not any(h is not None and len(h) for h in fresh):
        tasks = ranker.score_tasks(merged, users, item_log_pop, user_log_act)
    else:
        tasks = ranker.score_tasks(merged, users, item_log_pop, user_log_act, fresh=fresh)
    return [(fuse(t, weights), t) for t in tasks]


def rerank(m: MergedCandidates, fused: np.ndarray, k: int, spec: Any, categories: sp.csr_matrix | None) -> np.ndarray:
    """Positions of the top k: fused order, then the re-ranker `spec.method` on the top `spec.window`."""
    order = np.argsort(-fused, kind="stable")
    if spec.method == "none" or len(order) == 0:
        return order[:k]
    head = RERANKERS.get(spec.method)(order[: spec.window], m.items, fused, categories, spec, k)
    return head[:k]


@RERANKERS.register("cap")
def _cap(order, items, fused, cats, spec, k):
    return cap_rerank(order, items, cats, spec.max_per_category, k)


@RERANKERS.register("mmr")
def _mmr(order, items, fused, cats, spec, k):
    return mmr_rerank(order, items, fused, cats, spec.mmr_lambda, k)


@RERANKERS.register("none")
def _none(order, items, fused, cats, spec, k):
    return order


def category_matrix(values: list[list], n_items: int) -> sp.csr_matrix:
    """(I, V) binary item × category matrix of a multi-valued (or scalar) item column."""
    vocab: dict = {}
    rows, cols = [], []
    for i, vs in enumerate(values):
        for v in (vs if isinstance(vs, list | tuple) else [vs]) if vs is not None else ():
            rows.append(i)
            cols.append(vocab.setdefault(v, len(vocab)))
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_items, max(len(vocab), 1)))


def cap_rerank(order: np.ndarray, items: np.ndarray, cats: sp.csr_matrix, max_per_category: int, k: int) -> np.ndarray:
    """Positions (into `items`) of the re-ranked list: within the first k, no category value
    appears more than `max_per_category` times (while enough items allow it)."""
    counts: dict[int, int] = {}
    picked, rest = [], []
    for p in order:
        c = cats.indices[cats.indptr[items[p]] : cats.indptr[items[p] + 1]]
        if len(picked) < k and all(counts.get(int(x), 0) < max_per_category for x in c):
            picked.append(p)
            for x in c:
                counts[int(x)] = counts.get(int(x), 0) + 1
        else:
            rest.append(p)
    return np.asarray(picked + rest, dtype=np.int64)


def mmr_rerank(order: np.ndarray, items: np.ndarray, scores: np.ndarray, cats: sp.csr_matrix,
               lam: float, k: int) -> np.ndarray:
    """Positions of the MMR order of the first k picks (then the rest in fused order)."""
    cand = np.asarray(order, dtype=np.int64)
    if len(cand) == 0:
        return cand
    s = scores[cand].astype(np.float64)
    rel = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.ones_like(s)
    C = cats[items[cand]].toarray()
    inter = C @ C.T
    size = C.sum(1)
    union = size[:, None] + size[None, :] - inter
    sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    max_sim = np.zeros(len(cand))
    free = np.ones(len(cand), bool)
    picked = []
    for _ in range(min(k, len(cand))):
        val = np.where(free, lam * rel - (1 - lam) * max_sim, -np.inf)
        j = int(np.argmax(val))
        picked.append(j)
        free[j] = False
        max_sim = np.maximum(max_sim, sim[j])
    rest = [j for j in range(len(cand)) if free[j]]
    return cand[np.asarray(picked + rest, dtype=np.int64)]


