"""Offline metrics: CTR (AUC and logloss from scikit-learn, GAUC vectorized here) and top-K ranking (Recall, NDCG, Hit, MRR,
Precision @K), catalogue coverage and average popularity.

Ranking metrics follow RecBole 1.2.1's definitions so figures compare with its tables:
for a user with positive set P (|P| ≥ 1) and top-K list r_1..r_K,
    Recall@K    = |{r_j ∈ P}| / |P|
    Precision@K = |{r_j ∈ P}| / K
    Hit@K       = 1[∃ r_j ∈ P]
    MRR@K       = 1 / (first j with r_j ∈ P), 0 if none
    NDCG@K      = Σ_j 1[r_j ∈ P] / log2(j + 1)  /  Σ_{j ≤ min(|P|, K)} 1 / log2(j + 1)
averaged over users with at least one positive. Everything is vectorized over users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata
from sklearn.metrics import log_loss, roc_auc_score

from funnelrec.core.types import PAD


def _as_arrays(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values, y_score {s.size}")
    return y, s


def auc(y_true, y_score, sample_weight=None) -> float:
    """ROC AUC (scikit-learn's `roc_auc_score`; ties count one half, as the Mann–Whitney
    statistic with average ranks). Labels are binarised as y > 0.5.

    One class absent (e.g. a domain or a day without a click) → NaN, silently: callers average
    AUCs over groups and skip those, and a warning per group would drown the log.

        >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
        >>> auc([1, 1], [0.2, 0.3])
        nan
    """
    y, s = _as_arrays(y_true, y_score)
    pos = y > 0.5
    if pos.all() or not pos.any():
        return float("nan")
    return float(roc_auc_score(pos, s, sample_weight=sample_weight))


def gauc(user_ids, y_true, y_score, weight: str = "impressions") -> float:
    """Group AUC: the per-user AUC averaged over users that have both classes, weighted by the
    user's number of samples ("impressions", the usual industrial definition) or "uniform".

    Vectorized (one sort, ranks by bincount) rather than `roc_auc_score` per user: 2.5 s against
    148 s for 1M rows over 50k users, identical to 1e-12 (docs/BENCHMARKS.md, Evaluation)."""
    y, s = _as_arrays(y_true, y_score)
    u = np.asarray(user_ids).ravel()
    order = np.lexsort((s, u))
    u, y, s = u[order], y[order], s[order]
    # ranks within user with ties averaged: rank over (user, score) pairs, offset by user start
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.diff(np.r_[starts, u.size])
    key = np.column_stack([u, s])
    _, inv = np.unique(key, axis=0, return_inverse=True) if u.dtype.kind in "iuf" else (None, None)
    if inv is None:  # non-numeric ids: fall back to a loop over users (rare path)
        vals = [(auc(y[a:a + c], s[a:a + c]), c) for a, c in zip(starts, counts)]
    else:
        global_rank = rankdata(inv.ravel())  # ties = same (user, score)
        user_of = np.repeat(np.arange(starts.size), counts)
        local_rank = global_rank - np.repeat(starts, counts)
        pos = y > 0.5
        n_pos = np.bincount(user_of, weights=pos, minlength=starts.size)
        n_neg = counts - n_pos
        rank_sum = np.bincount(user_of, weights=local_rank * pos, minlength=starts.size)
        ok = (n_pos > 0) & (n_neg > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        vals = list(zip(a[ok], counts[ok]))
    vals = [(a, c) for a, c in vals if not np.isnan(a)]
    if not vals:
        return float("nan")
    a = np.array([v[0] for v in vals])
    w = np.array([v[1] for v in vals], dtype=np.float64) if weight == "impressions" else np.ones(len(vals))
    return float((a * w).sum() / w.sum())


def logloss(y_true, p, eps: float = 1e-7, sample_weight=None) -> float:
    """Mean binary cross-entropy −[y log p + (1−y) log(1−p)] (scikit-learn's `log_loss`),
    p clipped to [eps, 1−eps] first so a confident miss costs −log(eps) ≈ 16, not infinity.
    Labels are binarised as y > 0.5; one-class input is fine (both labels are declared).

        >>> round(logloss([1, 0], [0.9, 0.2]), 4)  # −(log 0.9 + log 0.8) / 2
        0.1643
    """
    y, q = _as_arrays(y_true, p)
    if q.size == 0:
        raise ValueError("logloss of no samples")
    q = np.clip(q, eps, 1 - eps)
    return float(log_loss(y > 0.5, q, labels=[False, True], sample_weight=sample_weight))


def topk_hits(topk: np.ndarray, positives: sp.csr_matrix, rows: np.ndarray | None = None) -> np.ndarray:
    """(U, K) bool: whether topk[u, j] is a positive of user rows[u] (PAD never hits)."""
    topk = np.asarray(topk, dtype=np.int64)
    n_items = positives.shape[1]
    pos = positives if rows is None else positives[rows]
    pos = pos.tocsr()
    pos_keys = np.repeat(np.arange(pos.shape[0], dtype=np.int64), np.diff(pos.indptr)) * n_items + pos.indices
    keys = np.arange(topk.shape[0], dtype=np.int64)[:, None] * n_items + np.where(topk >= 0, topk, 0)
    return np.isin(keys, pos_keys) & (topk != PAD)


def ranking_metrics(topk: np.ndarray, positives: sp.csr_matrix, ks: Sequence[int] = (10,),
                    rows: np.ndarray | None = None) -> dict[str, float]:
    """Recall/NDCG/Hit/MRR/Precision @k for every k in `ks`, averaged over users with ≥ 1
    positive. topk: (U, K) item indices (PAD = -1), best first; positives: CSR whose row u (or
    rows[u]) holds user u's positives."""
    topk = np.asarray(topk)
    pos = positives if rows is None else positives[rows]
    n_pos = np.diff(pos.tocsr().indptr).astype(np.float64)
    valid = n_pos > 0
    hits = topk_hits(topk, pos)[valid]
    n_pos = n_pos[valid]
    out: dict[str, float] = {"users": float(valid.sum())}
    disc = 1.0 / np.log2(np.arange(2, topk.shape[1] + 2))
    for k in ks:
        if k > topk.shape[1]:
            raise ValueError(f"@{k} asked but only {topk.shape[1]} items per user were ranked")
        h = hits[:, :k]
        nh = h.sum(1)
        out[f"recall@{k}"] = float((nh / n_pos).mean())
        out[f"precision@{k}"] = float((nh / k).mean())
        out[f"hit@{k}"] = float((nh > 0).mean())
        first = np.where(h.any(1), h.argmax(1) + 1, np.inf)
        out[f"mrr@{k}"] = float((1.0 / first).mean())
        dcg = (h * disc[:k]).sum(1)
        idcg = np.cumsum(disc[:k])[np.minimum(n_pos, k).astype(int) - 1]
        out[f"ndcg@{k}"] = float((dcg / idcg).mean())
    return out


def full_ranking_topk(score_fn: Callable[[np.ndarray], np.ndarray], users: np.ndarray, k: int,
                      exclude: sp.csr_matrix | None = None, block: int = 2048) -> np.ndarray:
    """Top-k items for each user by a dense scorer over the whole catalogue.

    score_fn(users_block) → (B, n_items) scores. Items in `exclude[user]` get −inf. Users are
    scored in blocks; np.argpartition picks k, then only those k are sorted."""
    users = np.asarray(users, dtype=np.int64)
    out = []
    for s in range(0, users.size, block):
        ub = users[s : s + block]
        scores = np.array(score_fn(ub), dtype=np.float32, copy=True)
        if exclude is not None:
            r, c = exclude[ub].nonzero()
            scores[r, c] = -np.inf
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        top = np.take_along_axis(scores, part, 1)
        order = np.argsort(-top, axis=1, kind="stable")
        items = np.take_along_axis(part, order, 1)
        items[~np.isfinite(np.take_along_axis(top, order, 1))] = PAD
        out.append(items)
    return np.concatenate(out) if out else np.empty((0, k), np.int64)


def item_coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's list."""
    t = np.asarray(topk).ravel()
    return float(np.unique(t[t != PAD]).size / n_items)


def average_popularity(topk: np.ndarray, item_popularity: np.ndarray) -> float:
    """Mean training popularity (interaction count) of the recommended items."""
    t = np.asarray(topk).ravel()
    t = t[t != PAD]
    return float(np.asarray(item_popularity)[t].mean()) if t.size else 0.0
