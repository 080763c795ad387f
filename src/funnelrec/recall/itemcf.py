"""Item-based collaborative filtering.

Similarity of items i, j from the binary user × item matrix R (U_i = users of i, I_u = items of u):

    c(i, j)    = Σ_{u ∈ U_i ∩ U_j} w_u,   w_u = 1 ("none"), 1/log(1 + |I_u|) ("iuf"), 1/|I_u| ("inverse")
    cosine     = c(i, j) / (sqrt(|U_i|·|U_j|) + shrink)
    asymmetric = c(i, j) / (|U_i|^a · |U_j|^(1−a) + shrink)      (a = 0.5 is cosine; a → 1 ≈ RP3β)
    jaccard    = c(i, j) / (|U_i| + |U_j| − |U_i ∩ U_j| + shrink)

Only the top-k neighbours of each item are kept (`neighbours_`, an (I, I) CSR, row i = i's list).
User score of a candidate s, with h(u, i) the history weight (1, or the rating):

    trigger:  score(u, s) = Σ_{i ∈ I_u} h(u, i) · sim_k(i → s)   (each history item expands to its k neighbours)
    target:   score(u, s) = Σ_{i ∈ I_u} h(u, i) · sim_k(s → i)   (RecBole ItemKNN: s's k neighbours in the history)

The neighbour lists are built by one numba pass over items (Σ_u |I_u|² work, parallel over
items, memory O(I·k)), so a 200k-item catalogue never materializes the dense product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError, NotFittedError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import CandidateBatch
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import (
    UserHistory,
    cap_rows,
    csr_topn,
    itemcf_kernel,
    rating_matrix,
    spmm_topn,
)
from funnelrec.recall.base import RecallChannel, RecallContext


@dataclass(frozen=True)
class ItemCFConfig:
    k: int = 100  # neighbours kept per item
    similarity: Literal["cosine", "asymmetric", "jaccard"] = "asymmetric"
    asymmetry: float = 0.3  # a of the asymmetric cosine (0.3 tuned on the ml-100k validation split)
    user_damping: Literal["none", "iuf", "inverse"] = "iuf"  # weight of active users, see above
    shrink: float = 0.0
    neighbourhood: Literal["trigger", "target"] = "target"
    normalize: bool = False  # divide each item's neighbour list by its largest similarity
    use_rating: bool = False  # history weight h(u, i) = rating instead of 1
    max_items_per_user: int = 0  # cap |I_u| used for similarity (seeded sample; 0 = all)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.shrink < 0:
            raise ConfigError(f"ItemCFConfig: k must be ≥ 1 and shrink ≥ 0, got k={self.k}, shrink={self.shrink}")
        if not 0.0 <= self.asymmetry <= 1.0:
            raise ConfigError(f"ItemCFConfig: asymmetry must be in [0, 1], got {self.asymmetry}")


def itemcf_neighbours(R: sp.csr_matrix, k: int, similarity: str = "cosine", user_damping: str = "none",
                      shrink: float = 0.0, asymmetry: float = 0.5, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """(I, I) CSR of each item's top-k neighbours by cosine/asymmetric cosine/Jaccard on the
    binary (U, I) matrix R; with `rows` only those items' lists are computed (the other rows
    empty) — each row depends on R alone, so a row computed here equals its row in a full fit."""
    R = sp.csr_matrix(R, dtype=np.float32)
    R.sort_indices()
    Rt = sp.csr_matrix(R.T)
    Rt.sort_indices()
    lens = np.diff(R.indptr).astype(np.float64)
    if user_damping not in ("none", "iuf", "inverse"):
        raise ConfigError(f"unknown user_damping {user_damping!r}; known: none, iuf, inverse")
    user_w = {"none": np.ones(R.shape[0]), "iuf": 1.0 / np.log1p(np.maximum(lens, 1.0)),
              "inverse": 1.0 / np.maximum(lens, 1.0)}[user_damping]
    asym = asymmetry if similarity == "asymmetric" else 0.5
    rows = np.arange(R.shape[1], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    nbr, sims = itemcf_kernel(Rt.indptr.astype(np.int64), Rt.indices.astype(np.int64),
                               R.indptr.astype(np.int64), R.indices.astype(np.int64), user_w,
                               int(k), similarity == "jaccard", float(asym), float(shrink), rows)
    return rows_to_csr(rows, nbr, sims, R.shape[1])


def rows_to_csr(rows: np.ndarray, nbr: np.ndarray, sims: np.ndarray, n_items: int) -> sp.csr_matrix:
    """(len(rows), k) neighbour lists of the items `rows` → an (I, I) CSR with those rows filled."""
    keep = (nbr >= 0) & (sims > 0)
    r = np.nonzero(keep)[0]
    out = sp.csr_matrix((sims[keep].astype(np.float32), (rows[r], nbr[keep])), shape=(n_items, n_items))
    out.sort_indices()
    return out


def replace_rows(N: sp.csr_matrix, rows: np.ndarray, new: sp.csr_matrix) -> sp.csr_matrix:
    """N (grown to new's shape) with the rows `rows` taken from `new` instead."""
    n = new.shape[0]
    N = sp.csr_matrix((N.data, N.indices, np.concatenate([N.indptr, np.full(n - N.shape[0], N.indptr[-1])])),
                      shape=new.shape)
    keep = np.ones(n, bool)
    keep[rows] = False
    out = sp.csr_matrix(sp.diags(keep.astype(np.float32)) @ N + new, dtype=np.float32)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def touched_rows(R: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
    """The items that co-occur (share a user in R) with any of `items`, `items` included: the
    rows of an item-item similarity whose value can change when `items` gain users."""
    items = np.unique(np.asarray(items, np.int64))
    if not len(items):
        return items
    Rc = sp.csc_matrix(R)
    users = np.unique(Rc[:, items].indices)
    return np.union1d(np.unique(sp.csr_matrix(R)[users].indices), items).astype(np.int64)


def normalize_rows_max(m: sp.csr_matrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m, copy=True)
    mx = m.max(axis=1).toarray().ravel()
    mx[mx <= 0] = 1.0
    m.data /= np.repeat(mx, np.diff(m.indptr)).astype(m.data.dtype)
    return m


class NeighbourRecall(RecallChannel):
    """Shared recall of item-neighbour channels (itemCF, Swing): the history times the
    neighbour matrix, seen items excluded, top n."""

    neighbourhood: str = "trigger"

    def _fit_history(self, data: TrainData, use_rating: bool) -> UserHistory:
        return UserHistory(data.csr, rating_matrix(data) if use_rating else None)

    def _recall(self, users: np.ndarray, n: int, context: RecallContext | None) -> CandidateBatch:
        H, seen = self.history_.rows(users, context)
        N = self.neighbours_ if self.neighbourhood == "trigger" else self.neighbours_t_
        return spmm_topn(H, N, n, self.name, exclude=seen)

    def similar_items(self, items: np.ndarray, n: int) -> CandidateBatch:
        """Top-n neighbours of each item (i2i): (len(items), n) with the similarity as score."""
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        ok = (items >= 0) & (items < self.neighbours_.shape[0])
        rows = sp.csr_matrix(sp.diags(ok.astype(np.float32)) @ self.neighbours_[np.where(ok, items, 0)])
        return csr_topn(rows, n, self.name)


@RECALL_CHANNELS.register("itemcf")
class ItemCFRecall(NeighbourRecall):
    config_class = ItemCFConfig

    def __init__(self, config: ItemCFConfig | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.config = config or ItemCFConfig()
        self.neighbourhood = self.config.neighbourhood

    def fit(self, data: TrainData) -> ItemCFRecall:
        cfg = self.config
        R = cap_rows(data.csr, cfg.max_items_per_user, cfg.seed)
        N = itemcf_neighbours(R, cfg.k, cfg.similarity, cfg.user_damping, cfg.shrink, cfg.asymmetry)
        if cfg.normalize:
            N = normalize_rows_max(N)
        self.neighbours_ = N
        self.neighbours_t_ = sp.csr_matrix(N.T)
        self.history_ = self._fit_history(data, cfg.use_rating)
        self.fitted_ = True
        return self

    def update(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray | None = None,
               n_users: int | None = None, n_items: int | None = None) -> ItemCFRecall:
        """A copy with the consumptions (users[k], items[k]) (dense indices; ts unused) added to
        the co-occurrence data, equal to a fit on the training data plus these pairs (the online
        learner's incremental step). Only the rows a new pair can change are recomputed:
        c(i, j), |U_i| and w_u change only for the users that gained an item, so the rows are
        the items co-occurring with an item that gained a user (`touched_rows`). With
        max_items_per_user > 0 and a user over the cap, the seeded sample is global, so every
        row is recomputed. This channel is unchanged."""
        import copy

        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"recall channel {self.name!r} is not fitted; update() needs fit() or load()")
        cfg = self.config
        users = np.asarray(users, np.int64).reshape(-1)
        items = np.asarray(items, np.int64).reshape(-1)
        history = self.history_.with_interactions(users, items, n_users, n_items)
        R = history.seen
        capped = cfg.max_items_per_user > 0 and np.diff(R.indptr).max(initial=0) > cfg.max_items_per_user
        Rf = cap_rows(R, cfg.max_items_per_user, cfg.seed)
        if capped:
            rows = np.arange(R.shape[1], dtype=np.int64)
        else:
            old = self.history_.seen
            gained = sp.csr_matrix(R - sp.csr_matrix((old.data, old.indices, np.concatenate(
                [old.indptr, np.full(R.shape[0] - old.shape[0], old.indptr[-1])])), shape=R.shape))
            gained.eliminate_zeros()
            rows = touched_rows(R, np.unique(gained.indices))
        block = itemcf_neighbours(Rf, cfg.k, cfg.similarity, cfg.user_damping, cfg.shrink, cfg.asymmetry, rows=rows)
        if cfg.normalize:
            block = normalize_rows_max(block)
        new = copy.copy(self)
        new.neighbours_ = replace_rows(self.neighbours_, rows, block)
        new.neighbours_t_ = sp.csr_matrix(new.neighbours_.T)
        new.history_ = history
        return new
