"""Swing (Alibaba, Yang et al. 2020): item similarity from the *pairs* of users who both
consumed two items — a pair that shares few other items is stronger evidence than a pair of
heavy users who share everything.

    sim(i, j) = Σ_{u, v ∈ U_i ∩ U_j, u < v}  w_u · w_v / (α + |I_u ∩ I_v|),   w_u = |I_u|^(−β)

with β = 0.5 by default, optionally divided by (|U_i|·|U_j|)^γ (`popularity_power`); only pairs with |I_u ∩ I_v| ≥ 2 contribute (i itself is always shared).
As in industrial jobs the work is capped: at most `max_users_per_item` users (seeded sample) per
item and `max_items_per_user` items per user. One numba pass, parallel over items: for item i,
mark I_u, walk I_v for each later v to get the overlap, scatter-add into row i. Work
Σ_i C(|U_i|, 2)·|I_v|, memory O(I·k). Keeps the top-k neighbours per item like itemCF, whose
recall (`NeighbourRecall`) it shares.

`cosine_blend` > 0 adds that share of itemCF cosine to the row-max-normalized Swing score:
sim = (1 − b)·swing/max_j swing + b·cos/max_j cos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError, NotFittedError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import cap_rows, neighbours_to_csr, row_topk, swing_kernel
from funnelrec.recall.itemcf import (
    NeighbourRecall,
    itemcf_neighbours,
    normalize_rows_max,
    replace_rows,
    rows_to_csr,
    touched_rows,
)


@dataclass(frozen=True)
class SwingConfig:
    k: int = 100  # neighbours kept per item
    alpha: float = 1.0
    user_weight_power: float = 0.5  # β in w_u = |I_u|^-β
    max_users_per_item: int = 200  # cap of users per item (seeded sample); 0 = all
    max_items_per_user: int = 500  # cap of items per user (seeded sample); 0 = all
    neighbourhood: Literal["trigger", "target"] = "target"
    popularity_power: float = 0.0  # γ: sim(i, j) / (|U_i|·|U_j|)^γ, a cosine-like popularity penalty
    cosine_blend: float = 0.0  # b in (1 − b)·swing + b·cosine, both row-max-normalized; 0 = pure swing
    use_rating: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 0 or not 0.0 <= self.cosine_blend <= 1.0:
            raise ConfigError(f"SwingConfig: need k ≥ 1, alpha ≥ 0, 0 ≤ cosine_blend ≤ 1; got {self}")


def swing_neighbours(R: sp.csr_matrix, k: int, alpha: float = 1.0, user_weight_power: float = 0.5,
                     max_users_per_item: int = 0, max_items_per_user: int = 0, seed: int = 0,
                     popularity_power: float = 0.0, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """(I, I) CSR of each item's top-k Swing neighbours on the binary (U, I) matrix R, each
    similarity divided by (|U_i|·|U_j|)^popularity_power (full, uncapped counts); with `rows`
    only those items' lists (the other rows empty, each row as in a full fit)."""
    item_norm = np.maximum(np.asarray(sp.csr_matrix(R).getnnz(axis=0), np.float64), 1.0) ** popularity_power
    R = cap_rows(sp.csr_matrix(R, dtype=np.float32), max_items_per_user, seed)
    R.sort_indices()
    Rt = cap_rows(sp.csr_matrix(R.T), max_users_per_item, seed + 1)
    Rt.sort_indices()
    lens = np.diff(R.indptr).astype(np.float64)
    user_w = np.maximum(lens, 1.0) ** -user_weight_power
    nbr, sims = swing_kernel(Rt.indptr.astype(np.int64), Rt.indices.astype(np.int64),
                              R.indptr.astype(np.int64), R.indices.astype(np.int64), user_w,
                              item_norm, float(alpha), int(k),
                              np.arange(R.shape[1], dtype=np.int64) if rows is None else np.asarray(rows, np.int64))
    if rows is None:
        return neighbours_to_csr(nbr, sims, R.shape[1])
    return rows_to_csr(np.asarray(rows, np.int64), nbr, sims, R.shape[1])


@RECALL_CHANNELS.register("swing")
class SwingRecall(NeighbourRecall):
    config_class = SwingConfig

    def __init__(self, config: SwingConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or SwingConfig()
        self.neighbourhood = self.config.neighbourhood

    def fit(self, data: TrainData) -> SwingRecall:
        cfg = self.config
        N = swing_neighbours(data.csr, cfg.k, cfg.alpha, cfg.user_weight_power, cfg.max_users_per_item,
                             cfg.max_items_per_user, cfg.seed, cfg.popularity_power)
        if cfg.cosine_blend > 0:
            cos = itemcf_neighbours(data.csr, cfg.k)
            N = row_topk((1 - cfg.cosine_blend) * normalize_rows_max(N)
                         + cfg.cosine_blend * normalize_rows_max(cos), cfg.k)
        self.neighbours_ = N
        self.neighbours_t_ = sp.csr_matrix(N.T)
        self.history_ = self._fit_history(data, cfg.use_rating)
        self.fitted_ = True
        return self

    def update(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray | None = None,
               n_users: int | None = None, n_items: int | None = None) -> SwingRecall:
        """A copy with the consumptions (users[k], items[k]) added, equal to a fit on the training
        data plus these pairs. Row i depends only on U_i and the item sets (and weights) of its
        users, so the rows that change are the items of the users that gained one, ∪_{u∈T} I_u
        (plus, with popularity_power > 0, every item co-occurring with one whose |U_i| grew).
        When a cap is active (a user over max_items_per_user, an item over max_users_per_item)
        or cosine_blend > 0, the seeded samples / the blend are global, so every row is
        recomputed. This channel is unchanged."""
        import copy

        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"recall channel {self.name!r} is not fitted; update() needs fit() or load()")
        cfg = self.config
        history = self.history_.with_interactions(users, items, n_users, n_items)
        R = history.seen
        old = self.history_.seen
        old = sp.csr_matrix((old.data, old.indices, np.concatenate(
            [old.indptr, np.full(R.shape[0] - old.shape[0], old.indptr[-1])])), shape=R.shape)
        gained = sp.csr_matrix(R - old)
        gained.eliminate_zeros()
        over = ((cfg.max_items_per_user > 0 and np.diff(R.indptr).max(initial=0) > cfg.max_items_per_user)
                or (cfg.max_users_per_item > 0 and R.getnnz(axis=0).max(initial=0) > cfg.max_users_per_item))
        new = copy.copy(self)
        new.history_ = history
        if over or cfg.cosine_blend > 0:
            new.fit_matrix(R)
            return new
        T = np.unique(np.repeat(np.arange(R.shape[0]), np.diff(gained.indptr)))
        rows = np.unique(R[T].indices).astype(np.int64)
        if cfg.popularity_power:
            rows = np.union1d(rows, touched_rows(R, np.unique(gained.indices)))
        block = swing_neighbours(R, cfg.k, cfg.alpha, cfg.user_weight_power, cfg.max_users_per_item,
                                 cfg.max_items_per_user, cfg.seed, cfg.popularity_power, rows=rows)
        new.neighbours_ = replace_rows(self.neighbours_, rows, block)
        new.neighbours_t_ = sp.csr_matrix(new.neighbours_.T)
        return new

    def fit_matrix(self, R: sp.csr_matrix) -> SwingRecall:
        """The neighbour lists of a full fit on the binary (U, I) matrix R (the history stays)."""
        cfg = self.config
        N = swing_neighbours(R, cfg.k, cfg.alpha, cfg.user_weight_power, cfg.max_users_per_item,
                             cfg.max_items_per_user, cfg.seed, cfg.popularity_power)
        if cfg.cosine_blend > 0:
            cos = itemcf_neighbours(R, cfg.k)
            N = row_topk((1 - cfg.cosine_blend) * normalize_rows_max(N)
                         + cfg.cosine_blend * normalize_rows_max(cos), cfg.k)
        self.neighbours_ = N
        self.neighbours_t_ = sp.csr_matrix(N.T)
        return self
