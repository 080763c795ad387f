"""Features of a (user, candidate) pair that only the funnel knows: what recall said.

For every merged candidate: per channel — was it recalled (0/1), its score normalized by the
channel's best score for that user, and its reciprocal rank in that channel; then the merge
position, the item's log popularity and the user's log activity. These are the features an
industrial ranker gets from the recall stage (the "recall source" features).
"""

from __future__ import annotations

import numpy as np

from funnelrec.core.types import MergedCandidates


def feature_names(channels: list[str]) -> list[str]:
    names = []
    for c in channels:
        names += [f"{c}:recalled", f"{c}:score_norm", f"{c}:recip_rank"]
    return names + ["merge_pos_recip", "item_log_pop", "user_log_activity", "n_channels"]


def candidate_features(
    merged: list[MergedCandidates], users: np.ndarray, item_log_pop: np.ndarray, user_log_act: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack all users' candidates: returns (user_idx (M,), item_idx (M,), X (M, d) float32)."""
    sizes = np.array([len(m) for m in merged], dtype=np.int64)
    if sizes.sum() == 0:
        n_ch = len(merged[0].channels) if merged else 0
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 3 * n_ch + 4), np.float32)
    items = np.concatenate([m.items for m in merged]).astype(np.int64)
    u = np.repeat(np.asarray(users, dtype=np.int64), sizes)
    scores = np.concatenate([m.scores for m in merged]).astype(np.float32)  # (M, C), NaN = absent
    recalled = ~np.isnan(scores)
    s = np.where(recalled, scores, -np.inf)
    # per-user max and within-channel rank, computed per user block (small blocks, vectorized inside)
    norm = np.zeros_like(scores)
    rrank = np.zeros_like(scores)
    start = 0
    for size in sizes:
        if size:
            blk = s[start : start + size]
            mx = np.max(np.where(np.isfinite(blk), np.abs(blk), 0), axis=0)
            mx[mx == 0] = 1
            norm[start : start + size] = np.where(np.isfinite(blk), blk / mx, 0)
            order = np.argsort(-blk, axis=0, kind="stable")
            ranks = np.empty_like(order)
            np.put_along_axis(ranks, order, np.arange(size)[:, None].repeat(blk.shape[1], 1), axis=0)
            rrank[start : start + size] = np.where(np.isfinite(blk), 1.0 / (ranks + 1), 0)
        start += size
    pos = np.concatenate([np.arange(n) for n in sizes]).astype(np.float32)
    per_ch = np.stack([recalled.astype(np.float32), norm, rrank], axis=2).reshape(len(items), -1)
    X = np.column_stack([
        per_ch,
        1.0 / (pos + 1),
        item_log_pop[items],
        user_log_act[u],
        recalled.sum(1).astype(np.float32),
    ]).astype(np.float32)
    return u, items, X
