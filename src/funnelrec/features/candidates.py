"""Features of a (user, candidate) pair that only the funnel knows: what recall said.

For every merged candidate: per channel — was it recalled (0/1), its score normalized by the
channel's best score for that user, and its reciprocal rank in that channel; then the merge
position, the item's log popularity and the user's log activity. These are the features an
industrial ranker gets from the recall stage (the "recall source" features).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.errors import DataError, NotFittedError
from funnelrec.core.sparse import ranges, row_values, take_rows
from funnelrec.core.types import MergedCandidates


def feature_names(channels: list[str]) -> list[str]:
    names = []
    for c in channels:
        names += [f"{c}:recalled", f"{c}:score_norm", f"{c}:recip_rank"]
    return names + ["merge_pos_recip", "item_log_pop", "user_log_activity", "n_channels"]


def candidate_features(
    merged: list[MergedCandidates], users: np.ndarray, item_log_pop: np.ndarray, user_log_act: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack all users' candidates: returns (user_idx (M,), item_idx (M,), X (M, d) float32).
    Sets with features attached (`attach_features`) give those rows as they are."""
    sizes = np.array([len(m) for m in merged], dtype=np.int64)
    if merged and all(m.features is not None for m in merged):
        items = np.concatenate([m.items for m in merged]).astype(np.int64)
        u = np.repeat(np.asarray(users, dtype=np.int64), sizes)
        return u, items, np.concatenate([m.features for m in merged]).astype(np.float32, copy=False)
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
        np.where(u >= 0, user_log_act[np.maximum(u, 0)], 0.0),  # unknown user (-1): no activity
        recalled.sum(1).astype(np.float32),
    ]).astype(np.float32)
    return u, items, X


def attach_features(merged: list[MergedCandidates], users: np.ndarray, item_log_pop: np.ndarray,
                    user_log_act: np.ndarray) -> list[MergedCandidates]:
    """Compute the recall-source features on the full merged lists and attach them (in place):
    a candidate keeps its merge position, ranks and normalized scores through later cuts."""
    todo = [r for r, m in enumerate(merged) if m.features is None]
    if todo:
        sub = [merged[r] for r in todo]
        _, _, X = candidate_features(sub, np.asarray(users, dtype=np.int64)[todo], item_log_pop, user_log_act)
        for m, x in zip(sub, np.split(X, np.cumsum([len(m) for m in sub])[:-1])):
            m.features = x
    return merged


def ease_weights(history: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019): the item-to-item ridge regression with a zero diagonal, closed form
        P = (XᵀX + λI)⁻¹,  B = I − P · diag(1/diag(P))  (so diag(B) = 0),
    X the (U, I) history. Returns B (I, I) float32; score(u, ·) = X_u B. Dense: O(I²) memory,
    O(I³) time — for catalogues up to a few ten thousand items."""
    X = sp.csr_matrix(history, dtype=np.float64)
    G = (X.T @ X).toarray()
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    return B.astype(np.float32)


def _multi_hot(values: list[list], n_items: int) -> sp.csr_matrix:
    """(I, V) binary item × attribute-value matrix of a multi-valued column."""
    vocab: dict = {}
    rows, cols = [], []
    for i, vs in enumerate(values):
        for v in vs or ():
            rows.append(i)
            cols.append(vocab.setdefault(v, len(vocab)))
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_items, max(len(vocab), 1)))


class HistoryMatch:
    """Match features between a user's history H_u (binary row of the training CSR) and a candidate i.

    For each attribute column a (multi-valued item column, e.g. genres, directors), with A the
    (I, V) item × value matrix:
        count_a(u, i) = Σ_v (H_u A)_v · A_iv      (history events sharing a value with i)
        share_a(u, i) = count_a / (|A_i| · |H_u|)  (the same, as a fraction of the history)
    entered as log(1 + count_a) and share_a. With `ridge_lambda` > 0 (and at most `max_items`
    items) also the item-to-item ridge-regression match (EASE, Steck 2019), fitted in closed form
    on the same history:
        P = (HᵀH + λI)⁻¹,  B = I − P · diag(1/diag(P)),  diag(B) = 0,  ridge(u, i) = (H_u B)_i.

    fit(history (U, I) CSR, items table) → self; transform(users (M,), items (M,), history)
    → (M, d) float32; `names_` has the d column names. The history passed to transform is the one
    the features describe (the fitted one by default) so a request sees its user's current row.
    """

    def __init__(self, columns: tuple[str, ...] = ("genres", "directors"), ridge_lambda: float = 0.0,
                 max_items: int = 20_000) -> None:
        self.columns = tuple(columns)
        self.ridge_lambda = ridge_lambda
        self.max_items = max_items

    def fit(self, history: sp.csr_matrix, items: pl.DataFrame) -> HistoryMatch:
        n_items = history.shape[1]
        missing = [c for c in self.columns if c not in items.columns]
        if missing:
            raise DataError(f"match columns {missing} not in the items table; it has: {', '.join(items.columns)}")
        self.attrs_: dict[str, sp.csr_matrix] = {}
        for c in self.columns:
            col = items[c]
            vals = col.to_list() if isinstance(col.dtype, pl.List) else [[v] if v is not None else [] for v in col.to_list()]
            self.attrs_[c] = _multi_hot(vals, n_items)
        self.names_ = [f"{p}_{c}" for c in self.columns for p in ("match_log", "match_share")]
        self.ridge_ = None
        if self.ridge_lambda > 0 and n_items <= self.max_items:
            self.ridge_ = ease_weights(history, self.ridge_lambda)
            self.names_.append("ridge_match")
        self.history_ = sp.csr_matrix(history, dtype=np.float32)
        return self

    def transform(self, users: np.ndarray, items: np.ndarray, history: sp.csr_matrix | None = None) -> np.ndarray:
        if not hasattr(self, "attrs_"):
            raise NotFittedError("HistoryMatch is not fitted")
        H = self.history_ if history is None else sp.csr_matrix(history, dtype=np.float32)
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        if len(u) == 0:
            return np.empty((0, len(self.names_)), np.float32)
        uniq, inv = np.unique(u, return_inverse=True)
        Hu = take_rows(H, uniq)  # (U', I): only the users asked about
        n_hist = np.maximum(np.bincount(np.repeat(np.arange(len(uniq)), np.diff(Hu.indptr)), weights=Hu.data,
                                        minlength=len(uniq)), 1.0)[inv]
        cols = []
        for A in self.attrs_.values():
            # count(u, i) = Σ_{v ∈ A_i} (H_u A)_v: gather the candidate's values, look each up in the
            # sparse row H_u A — never a dense (rows × values) array (200k authors would need GiBs)
            UA = (Hu @ A).tocsr()
            UA.sum_duplicates()
            UA.sort_indices()
            lens = A.indptr[i + 1] - A.indptr[i]
            pos = ranges(A.indptr[i], lens)
            owner = np.repeat(np.arange(len(i)), lens)
            hits = row_values(UA, inv[owner], A.indices[pos]) * A.data[pos]
            cnt = np.bincount(owner, weights=hits, minlength=len(i))
            cols += [np.log1p(cnt), cnt / np.maximum(lens, 1) / n_hist]
        if self.ridge_ is not None:
            HB = np.asarray(Hu @ self.ridge_)  # (U', I)
            cols.append(HB[inv, i])
        return np.column_stack(cols).astype(np.float32)
