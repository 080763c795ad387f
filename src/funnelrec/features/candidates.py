"""Features of a (user, candidate) pair that only the funnel knows: what recall said.

For every merged candidate: per channel — was it recalled (0/1), its score normalized by the
channel's best score for that user, and its reciprocal rank in that channel; then the merge
position, the item's log popularity and the user's log activity. These are the features an
industrial ranker gets from the recall stage (the "recall source" features).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numba
import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError, DataError, NotFittedError
from funnelrec.core.sparse import grown, take_rows
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
    scores = np.ascontiguousarray(np.concatenate([m.scores for m in merged]), dtype=np.float32)  # NaN = absent
    X = _recall_features_kernel(scores, sizes, items, u, np.asarray(item_log_pop, np.float32),
                                np.asarray(user_log_act, np.float32))
    return u, items, X


@numba.njit(cache=True, nogil=True)
def _recall_features_kernel(scores, sizes, items, users, item_log_pop, user_log_act):
    """X (M, 3C + 4) float32 of `candidate_features`, one pass per user block. Per channel c:
    recalled = score not NaN; norm = s / max|s| over the block's finite scores (1 if none);
    recip_rank = 1 / (1 + rank) with rank the position of the item in the block sorted by
    descending score, ties by merge position (a stable sort); non-finite scores get 0."""
    M, C = scores.shape
    X = np.zeros((M, 3 * C + 4), np.float32)
    keys = np.empty(M, np.float64)
    rows = np.empty(M, np.int64)
    start = 0
    for b in range(sizes.size):
        n = sizes[b]
        for c in range(C):
            mx = np.float32(0.0)
            for r in range(start, start + n):
                v = scores[r, c]
                if np.isfinite(v) and abs(v) > mx:
                    mx = abs(v)
            if mx == 0:
                mx = np.float32(1.0)
            cnt = 0
            for r in range(start, start + n):
                v = scores[r, c]
                if not np.isnan(v):
                    X[r, 3 * c] = 1.0
                    if np.isfinite(v):
                        X[r, 3 * c + 1] = v / mx
                    if v > -np.inf:  # what precedes a finite score in the sort: finite or +inf
                        keys[cnt] = -np.float64(v)
                        rows[cnt] = r
                        cnt += 1
            order = np.argsort(keys[:cnt], kind="mergesort")
            for k in range(cnt):
                r = rows[order[k]]
                if np.isfinite(scores[r, c]):
                    X[r, 3 * c + 2] = 1.0 / (k + 1)
        for r in range(start, start + n):
            X[r, 3 * C] = np.float32(1.0) / np.float32(r - start + 1)
            X[r, 3 * C + 1] = item_log_pop[items[r]]
            X[r, 3 * C + 2] = user_log_act[users[r]] if users[r] >= 0 else 0.0  # unknown user: no activity
            k = 0
            for c in range(C):
                k += not np.isnan(scores[r, c])
            X[r, 3 * C + 3] = k
        start += n
    return X


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


_SCRATCH = threading.local()


def _zeroed_scratch(n: int) -> np.ndarray:
    """A per-thread float64 buffer of ≥ n zeros; `_match_counts_kernel` leaves it zeroed."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < n:
        buf = _SCRATCH.buf = np.zeros(n, np.float64)
    return buf


@numba.njit(cache=True, nogil=True)
def _match_counts_kernel(h_ptr, h_idx, h_dat, a_ptr, a_idx, a_dat, order, grp, items, scratch):
    """Per user group g (history row g of H): scratch = H_g A; count of each of its candidates
    m = Σ_{q ∈ A_items[m]} scratch[a_idx[q]]·a_dat[q]; then scratch is zeroed again.
    Returns (counts (M,), history size Σ H_g (G,))."""
    G = grp.size - 1
    cnt = np.zeros(items.size, np.float64)
    n_hist = np.zeros(G, np.float64)
    for g in range(G):
        for p in range(h_ptr[g], h_ptr[g + 1]):
            w = np.float64(h_dat[p])
            n_hist[g] += w
            it = h_idx[p]
            for q in range(a_ptr[it], a_ptr[it + 1]):
                scratch[a_idx[q]] += w * a_dat[q]
        for t in range(grp[g], grp[g + 1]):
            m = order[t]
            i = items[m]
            acc = 0.0
            for q in range(a_ptr[i], a_ptr[i + 1]):
                acc += scratch[a_idx[q]] * a_dat[q]
            cnt[m] = acc
        for p in range(h_ptr[g], h_ptr[g + 1]):
            it = h_idx[p]
            for q in range(a_ptr[it], a_ptr[it + 1]):
                scratch[a_idx[q]] = 0.0
    return cnt, n_hist


def ease_weights(history: sp.csr_matrix, lam: float, dropout: float = 0.0) -> np.ndarray:
    """EASE (Steck 2019): the item-to-item ridge regression with a zero diagonal, closed form
        P = (XᵀX + Λ)⁻¹,  B = I − P · diag(1/diag(P))  (so diag(B) = 0),
    X the (U, I) history, Λ = λI. `dropout` p > 0 is EDLAE (Steck 2020, "Autoencoders that
    don't overfit towards the identity"): the closed form of training under input dropout p,
    Λ = λI + p/(1 − p) · diag(XᵀX), a penalty that grows with an item's popularity.
    Returns B (I, I) float32; score(u, ·) = X_u B. Dense: O(I²) memory, O(I³) time — for
    catalogues up to a few ten thousand items."""
    X = sp.csr_matrix(history, dtype=np.float64)
    G = (X.T @ X).toarray()
    if dropout:
        G[np.diag_indices_from(G)] += dropout / (1.0 - dropout) * np.diag(G).copy()
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


def _multi_hot_column(col: pl.Series) -> sp.csr_matrix:
    """`_multi_hot` of a (list or scalar) column without a Python loop over its rows: the same
    matrix up to the numbering of the values (a value repeated in a list counts twice, a null
    element of a list is a value, a null list or scalar none)."""
    n = col.len()
    frame = pl.DataFrame({"r": np.arange(n), "v": col})
    if isinstance(col.dtype, pl.List):
        frame = frame.filter(pl.col("v").list.len().fill_null(0) > 0).explode("v")
        null = frame["v"].is_null().to_numpy()
    else:
        frame = frame.filter(pl.col("v").is_not_null())
        null = np.zeros(frame.height, bool)
    rows = frame["r"].to_numpy().astype(np.int64)
    # a null element is its own value, apart from every string
    key = np.where(null, "\x00null", frame["v"].cast(pl.String).fill_null("").to_numpy().astype(str))
    uniq, codes = np.unique(key, return_inverse=True)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, codes.reshape(-1))), shape=(n, max(len(uniq), 1)))


def recent_rows(user_idx: np.ndarray, item_idx: np.ndarray, ts: np.ndarray, history: sp.csr_matrix,
                decay: float, n: int) -> sp.csr_matrix:
    """(U, I) CSR of each user's `n` latest distinct items among the events that are in
    `history` (nonzero there), weighted decay^k for the k-th newest (k = 0: weight 1); an item's
    recency is its latest event, equal times ordered by the later row."""
    u = np.asarray(user_idx, np.int64)
    i = np.asarray(item_idx, np.int64)
    t = np.asarray(ts, np.int64)
    U, I = history.shape
    ok = (u >= 0) & (u < U) & (i >= 0) & (i < I)
    u, i, t, row = u[ok], i[ok], t[ok], np.flatnonzero(ok)
    coo = sp.coo_matrix(history)
    held = np.sort((coo.row.astype(np.int64) * I + coo.col)[coo.data != 0])
    key = u * I + i
    pos = np.minimum(np.searchsorted(held, key), max(len(held) - 1, 0))
    inside = (held[pos] == key) if len(held) else np.zeros(len(u), bool)
    u, i, t, row = u[inside], i[inside], t[inside], row[inside]
    order = np.lexsort((-row, -t, u))  # per user newest first (a later row first among equal times)
    u, i = u[order], i[order]
    key = u * I + i
    _, first = np.unique(key, return_index=True)  # the newest event of each (user, item)
    keep = np.sort(first)
    u, i = u[keep], i[keep]
    starts = np.searchsorted(u, np.arange(U))
    rank = np.arange(len(u)) - starts[u]
    take = rank < n
    u, i, rank = u[take], i[take], rank[take]
    # float64: the order is read back from the weights (`current_recent_rows`), so no two may tie
    out = sp.csr_matrix((decay ** rank.astype(np.float64), (u, i)), shape=(U, I), dtype=np.float64)
    out.sort_indices()
    return out


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
    With `recent_decay` γ ∈ (0, 1) also the short-term interest, per column:
        recent_share_a(u, i) = Σ_k γ^k · |A_{j_k} ∩ A_i| / (|A_i| · Σ_k γ^k)
    over the user's `recent_n` latest distinct consumptions j_0 (the newest), j_1, … — the share
    of a recency-weighted history. It is defined by order, not by clock: a request's real-time
    history (`current`, oldest first) goes in front of the fit-time order, so each click since
    the fit moves the older ones one step down, the same way for training rows and requests.

    fit(history (U, I) CSR, items table) → self; transform(users (M,), items (M,), history)
    → (M, d) float32; `names_` has the d column names. The history passed to transform is the one
    the features describe (the fitted one by default) so a request sees its user's current row.
    """

    def __init__(self, columns: tuple[str, ...] = (), ridge_lambda: float = 0.0,
                 max_items: int = 20_000, recent_decay: float = 0.0, recent_n: int = 50) -> None:
        if not 0.0 <= recent_decay < 1.0:
            raise ConfigError(f"rank.recent_decay must be in [0, 1) (0 = no short-term block), got {recent_decay}")
        if recent_n < 1:
            raise ConfigError(f"rank.recent_n must be ≥ 1, got {recent_n}")
        self.columns = tuple(columns)
        self.ridge_lambda = ridge_lambda
        self.max_items = max_items
        self.recent_decay = float(recent_decay)
        self.recent_n = int(recent_n)

    def fit(self, history: sp.csr_matrix, items: pl.DataFrame, events: tuple | None = None) -> HistoryMatch:
        """`events` (user_idx, item_idx, ts) arrays, the history's consumptions in time: needed
        for the short-term block (`recent_decay` > 0), which orders them; pairs not in `history`
        are left out."""
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
        self.recent_ = None
        if self.recent_decay > 0 and self.columns:
            if events is None:
                raise ConfigError("rank.recent_decay > 0 needs the fit-time events in time order (user, item, ts)")
            self.recent_ = recent_rows(*events, self.history_, self.recent_decay, self.recent_n)
            self.names_ += [f"recent_share_{c}" for c in self.columns]
        return self

    def transform(self, users: np.ndarray, items: np.ndarray, history: sp.csr_matrix | None = None,
                  recent: sp.csr_matrix | None = None) -> np.ndarray:
        """(M, d) features of pairs (users[m], items[m]); `history` / `recent`: the (·, I) rows
        the users index (default the fitted ones; `current` builds a request batch's)."""
        if not hasattr(self, "attrs_"):
            raise NotFittedError("HistoryMatch is not fitted")
        H = self.history_ if history is None else sp.csr_matrix(history, dtype=np.float32)
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        if len(u) == 0:
            return np.empty((0, len(self.names_)), np.float32)
        uniq, inv = np.unique(u, return_inverse=True)
        Hu = take_rows(H, uniq)  # (U', I): only the users asked about; an unknown user → empty row
        order = np.argsort(inv, kind="stable")
        grp = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
        cols = []
        for A in self.attrs_.values():
            # count(u, i) = Σ_{v ∈ A_i} (H_u A)_v: the user's value counts go into a zeroed scratch
            # vector (sparse work, no dense rows × values array: 200k authors would need GiBs),
            # each candidate sums its values' entries, then the touched entries are reset
            cnt, n_hist = _match_counts_kernel(Hu.indptr, Hu.indices, Hu.data, A.indptr, A.indices, A.data,
                                               order, grp, i, _zeroed_scratch(A.shape[1]))
            lens = A.indptr[i + 1] - A.indptr[i]
            cols += [np.log1p(cnt), cnt / np.maximum(lens, 1) / np.maximum(n_hist, 1.0)[inv]]
        if self.ridge_ is not None:
            HB = np.asarray(Hu @ self.ridge_)  # (U', I)
            cols.append(HB[inv, i])
        R = getattr(self, "recent_", None)  # artifacts saved before the short-term block have none
        if R is not None:
            Ru = take_rows(R if recent is None else sp.csr_matrix(recent, dtype=np.float64), uniq)
            for A in self.attrs_.values():
                cnt, w_sum = _match_counts_kernel(Ru.indptr, Ru.indices, Ru.data, A.indptr, A.indices, A.data,
                                                  order, grp, i, _zeroed_scratch(A.shape[1]))
                lens = A.indptr[i + 1] - A.indptr[i]
                cols.append(cnt / np.maximum(lens, 1) / np.maximum(w_sum, 1.0)[inv])  # Σ w ≥ 1 when any
        return np.column_stack(cols).astype(np.float32)

    def current(self, users: np.ndarray, fresh: Sequence, history: sp.csr_matrix | None = None
                ) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
        """(`current_rows`, `current_recent_rows` or None): the batch rows `transform` reads with
        users = arange(B) as `history` and `recent`."""
        H = self.current_rows(users, fresh, history)
        return H, (self.current_recent_rows(users, fresh) if getattr(self, "recent_", None) is not None else None)

    def current_recent_rows(self, users: np.ndarray, fresh: Sequence) -> sp.csr_matrix:
        """(B, I) short-term rows: row r = the items of fresh[r] (oldest first; the latest
        occurrence of a repeated item counts) newest first, then user r's fit-time order without
        them, the first `recent_n` weighted γ^0, γ^1, …"""
        users = np.asarray(users, dtype=np.int64)
        R = self.recent_
        base = take_rows(R, users)
        indptr, indices, data = [0], [], []
        g = self.recent_decay
        for r in range(len(users)):
            lo, hi = base.indptr[r], base.indptr[r + 1]
            old = base.indices[lo:hi][np.argsort(-base.data[lo:hi], kind="stable")]  # fit-time order, newest first
            h = fresh[r] if r < len(fresh) else None
            h = np.zeros(0, np.int64) if h is None else np.asarray(h, np.int64).reshape(-1)[::-1]
            h = h[(h >= 0) & (h < R.shape[1])]
            _, first = np.unique(h, return_index=True)
            h = h[np.sort(first)]  # distinct, newest occurrence first
            row = np.concatenate([h, old[~np.isin(old, h)]])[: self.recent_n]
            indices.append(row)
            data.append(g ** np.arange(len(row), dtype=np.float64))
            indptr.append(indptr[-1] + len(row))
        out = sp.csr_matrix((np.concatenate(data) if data else np.zeros(0, np.float64),
                             np.concatenate(indices) if indices else np.zeros(0, np.int64), indptr),
                            shape=(len(users), R.shape[1]))
        out.sort_indices()
        return out

    def current_rows(self, users: np.ndarray, fresh: Sequence, history: sp.csr_matrix | None = None
                     ) -> sp.csr_matrix:
        """(B, I) CSR of the users' current histories: row r = row users[r] of `history` (default
        the fitted one; empty for an unknown user, -1) ∪ the items of fresh[r] (None = none;
        indices outside [0, I) dropped), entry max(weight, 1) — the rows `transform` reads with
        users = arange(B). Only the batch's rows are built, never the (U, I) matrix."""
        if not hasattr(self, "attrs_"):
            raise NotFittedError("HistoryMatch is not fitted")
        users = np.asarray(users, dtype=np.int64)
        if len(fresh) != len(users):
            raise DataError(f"fresh history has {len(fresh)} rows for {len(users)} users")
        H = take_rows(sp.csr_matrix(self.history_ if history is None else history, dtype=np.float32), users)
        arrays = [np.zeros(0, np.int64) if h is None else np.asarray(h, np.int64).reshape(-1) for h in fresh]
        cols = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        rows = np.repeat(np.arange(len(users)), [len(a) for a in arrays])
        ok = (cols >= 0) & (cols < H.shape[1])
        X = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (rows[ok], cols[ok])), shape=H.shape)
        X.sum_duplicates()
        X.data[:] = 1.0
        out = sp.csr_matrix(H.maximum(X), dtype=np.float32)
        out.sort_indices()
        return out

    def extend_items(self, items: pl.DataFrame) -> HistoryMatch:
        """A copy over the catalogue `items` (the fitted items first, new ones appended, changed
        attributes read anew). count_a only asks which items share a value, so the value matrices
        are rebuilt from the table; nobody's history holds a new item; ridge(u, i) = 0 for one
        (B has zero rows and columns for it until the next fit). This object is unchanged."""
        import copy

        new = copy.copy(self)
        I_old, I_new = self.history_.shape[1], items.height
        new.attrs_ = {c: _multi_hot_column(items[c]) for c in self.columns}
        new.history_ = grown(self.history_, cols=I_new)
        if self.ridge_ is not None and I_new > I_old:
            B = np.zeros((I_new, I_new), np.float32)
            B[:I_old, :I_old] = self.ridge_
            new.ridge_ = B
        if getattr(self, "recent_", None) is not None:
            new.recent_ = grown(self.recent_, cols=I_new)
        return new

    def extend_users(self, n_users: int) -> HistoryMatch:
        """A copy whose histories have `n_users` rows (a new user's rows empty: no training
        history); this object is unchanged."""
        import copy

        new = copy.copy(self)
        new.history_ = grown(self.history_, rows=n_users)
        if getattr(self, "recent_", None) is not None:
            new.recent_ = grown(self.recent_, rows=n_users)
        return new


def _learned_rows(col: pl.Series, item_rows: np.ndarray, cols: list[int]) -> dict:
    """value → the embedding row it has in the item rows: value v at position p of row r (the
    first `len(cols)` values of a list column, as the encoder took them) sits in
    item_rows[r, cols[p]]; the first occurrence wins (every occurrence has the same row)."""
    frame = pl.DataFrame({"r": np.arange(col.len()), "v": col})
    if isinstance(col.dtype, pl.List):
        frame = (frame.filter(pl.col("v").list.len().fill_null(0) > 0)
                 .with_columns(pl.col("v").list.head(len(cols)))
                 .with_columns(pl.int_ranges(0, pl.col("v").list.len()).alias("p")).explode("v", "p"))
    else:
        frame = frame.with_columns(pl.lit(0, pl.Int64).alias("p"))
    frame = frame.filter(pl.col("v").is_not_null()).unique("v", keep="first", maintain_order=True)
    r, p = frame["r"].to_numpy().astype(np.int64), frame["p"].to_numpy().astype(np.int64)
    rows = item_rows[r, np.asarray(cols, np.int64)[p]] if len(r) else np.zeros(0, item_rows.dtype)
    return dict(zip(frame["v"].to_list(), rows.tolist()))


def _value_rows(old: np.ndarray, names: list[str], fitted: pl.DataFrame, table: pl.DataFrame,
                changed: np.ndarray, id_col: str) -> np.ndarray:
    """The (table.height, F) embedding-row table of `old` (rows of the `fitted` table) over the
    grown `table` (fitted rows first, new ones appended): a new or `changed` row takes, per
    attribute field of `names`, the learned row of its value (`_learned_rows`; 0 = a value no
    fitted row had), and keeps 0 (a new row) or its own row in the `id_col` field."""
    n_old = old.shape[0]
    rows = np.zeros((table.height, len(names)), old.dtype)
    rows[:n_old] = old
    todo = np.union1d(np.asarray(changed, np.int64), np.arange(n_old, table.height))
    for c in dict.fromkeys(names):
        if not len(todo) or c == id_col or c not in table.columns or c not in fitted.columns:
            continue
        cols = [j for j, n in enumerate(names) if n == c]
        learned = _learned_rows(fitted[c], old, cols)
        values = table[c].to_list()
        for r in todo.tolist():
            vs = values[r] if isinstance(values[r], list) else [values[r]]
            vs = [v for v in vs if v is not None]
            rows[r, cols] = 0
            for p, v in enumerate(vs[: len(cols)]):
                rows[r, cols[p]] = learned.get(v, 0)
    return np.ascontiguousarray(rows)


class RankFeatures:
    """The fine ranker's input for (user, candidate) pairs, one definition for training and serving.

    dense  = standardize([recall-source features (`candidate_features`) | `HistoryMatch` features])
    sparse = the user's and the item's FID rows of a `FeatureEncoder` over static id/attribute
             columns (an unknown user, u < 0, gets row 0 — "no value" — in every user field)

    fit(dataset, train, match) stores the encoder and the match features of the training history;
    `raw(...)` gives the unscaled dense block of merged candidates, `random_pairs(...)` that of
    random catalogue items (no recall source: only popularity, activity and the match block),
    `set_scale(X)` fixes the standardization from the training rows, `batch(u, items, X)` builds
    the model input dict.
    """

    def __init__(self, user_columns: tuple[str, ...], item_columns: tuple[str, ...], include_ids: bool = True,
                 multi_width: int = 3) -> None:
        self.user_columns = tuple(user_columns)
        self.item_columns = tuple(item_columns)
        self.include_ids = include_ids
        self.multi_width = multi_width

    def fit(self, train, match: HistoryMatch) -> RankFeatures:
        """`train`: the `TrainData` the funnel was fitted on; `match`: its fitted `HistoryMatch`.

        Only the encoder's output is kept — the users' and items' embedding-row tables and the
        batch layout — since static fields are all a request gathers; the FID vocabulary (a hash
        table as large as the catalogue) stays with the fit."""
        from funnelrec.data.dataset import TrainData
        from funnelrec.features.encoder import FeatureEncoder, FeatureEncoderConfig

        # static id/attribute fields; the label column is a constant (no count or match features here)
        cfg = FeatureEncoderConfig(user_columns=self.user_columns, item_columns=self.item_columns,
                                   include_ids=self.include_ids, multi_width=self.multi_width,
                                   label_column="_pos", label_threshold=None)
        const = TrainData(train.dataset, train.interactions.with_columns(pl.lit(1.0).alias("_pos")))
        enc = FeatureEncoder(cfg).fit(const)
        self.user_rows_ = np.ascontiguousarray(enc.user_rows_)  # (n_users, F_u) embedding rows
        self.item_rows_ = np.ascontiguousarray(enc.item_rows_)  # (n_items, F_i)
        self.spec_ = enc.spec  # n_embeddings, n_fields = F_u + F_i, field names
        self.match_ = match
        return self

    def raw(self, merged: list[MergedCandidates], users: np.ndarray, item_log_pop: np.ndarray,
            user_log_act: np.ndarray, match: HistoryMatch | None = None,
            history: sp.csr_matrix | None = None, fresh: Sequence | None = None,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u (M,), items (M,), X (M, d) unscaled) of every user's candidates, stacked. The match
        block reads `history` (U, I) by user index (default: the fitted one); with `fresh` (one
        item-index array or None per merged set: items consumed since the fit) it reads
        `match.current_rows` instead — row r = merged[r]'s user's fit-time row ∪ fresh[r],
        built for the batch's rows only."""
        match = match or self.match_
        users = np.asarray(users, dtype=np.int64)
        u, items, X = candidate_features(merged, users, item_log_pop, user_log_act)
        if not len(u):
            return u, items, np.hstack([X, np.empty((0, len(match.names_)), np.float32)])
        if fresh is not None and any(h is not None and len(h) for h in fresh):
            if len(fresh) != len(merged):
                raise DataError(f"fresh history has {len(fresh)} rows for {len(merged)} candidate sets")
            rows = np.repeat(np.arange(len(merged), dtype=np.int64), [len(m) for m in merged])
            # the batch row stands for the user: transform reads row `rows[m]` of the batch's rows
            H, R = match.current(users, fresh, history)
            M = match.transform(rows, items, H, R)
        else:
            M = match.transform(u, items, history)
        return u, items, np.hstack([X, M])

    @staticmethod
    def random_pairs(u: np.ndarray, items: np.ndarray, n_dense: int, item_log_pop: np.ndarray,
                     user_log_act: np.ndarray, match: HistoryMatch) -> np.ndarray:
        """(M, n_dense) unscaled features of random (u, item) pairs that no channel recalled."""
        X = np.zeros((len(u), n_dense), np.float32)
        n_rec = n_dense - len(match.names_)
        X[:, n_rec - 3] = item_log_pop[items]  # the layout of `feature_names`: …, pop, activity, n_channels
        X[:, n_rec - 2] = user_log_act[u]
        X[:, n_rec:] = match.transform(u, items)
        return X

    def extend_items(self, fitted: pl.DataFrame, items: pl.DataFrame, changed: np.ndarray) -> RankFeatures:
        """A copy whose item rows cover the catalogue `items` (the `fitted` items table first,
        new rows appended). The FID vocabulary is not kept, so each attribute field's value →
        embedding-row map is read off the fitted items (value v of column c sat in row r of
        item_rows_); a new or `changed` item gets the learned row of each of its values, row 0
        ("no value") for a value no fitted item had, and, a new item, row 0 in the item_id
        field (its id has no learned row until the vocabulary grows). This object is unchanged."""
        import copy

        new = copy.copy(self)
        F_u = self.user_rows_.shape[1]
        names = list(self.spec_.field_names[F_u:F_u + self.item_rows_.shape[1]])
        new.item_rows_ = _value_rows(self.item_rows_, names, fitted, items, changed, "item_id")
        new.match_ = self.match_.extend_items(items)
        return new

    def extend_users(self, fitted: pl.DataFrame, users: pl.DataFrame, changed: np.ndarray) -> RankFeatures:
        """`extend_items` for the user side: user rows over the users table `users` (the `fitted`
        table first, new rows appended); a new or `changed` user gets the learned row of each of
        its attribute values (row 0 for a value no fitted user had), a new one row 0 in the
        user_id field. This object is unchanged."""
        import copy

        new = copy.copy(self)
        F_u = self.user_rows_.shape[1]
        names = list(self.spec_.field_names[:F_u])
        U_new = users.height
        new.user_rows_ = _value_rows(self.user_rows_, names, fitted, users, changed, "user_id")
        if self.match_.history_.shape[0] < U_new:  # a new user has no training history (the match features read it)
            new.match_ = self.match_.extend_users(U_new)
        return new

    def set_scale(self, X: np.ndarray) -> RankFeatures:
        self.mean_ = X.mean(0)
        self.std_ = X.std(0) + 1e-6
        return self

    def batch(self, u: np.ndarray, items: np.ndarray, X: np.ndarray) -> dict:
        import torch

        if not hasattr(self, "mean_"):
            raise NotFittedError("RankFeatures: call fit() and set_scale() first")
        if X.shape[1] != len(self.mean_):
            raise ConfigError(f"ranker features: {X.shape[1]} dense columns for a ranker fitted on {len(self.mean_)} "
                              "(the channel list or match columns changed since it was fitted)")
        u = np.asarray(u, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        known = u >= 0
        user = self.user_rows_[np.where(known, u, 0)]
        if not known.all():
            user[~known] = 0
        sparse = np.concatenate([user, self.item_rows_[i]], axis=1)
        dense = (X - self.mean_) / self.std_
        # a column constant over the training rows (std 0, e.g. the cache channel's, which recalls
        # nothing while the ranker is fitted) taught the model nothing; its serving value would be
        # blown up by 1/1e-6 into ±1e6 × an untrained weight: it enters as its training value, 0
        constant = self.std_ < 2e-6  # std_ = std + 1e-6 (set_scale): a training std below 1e-6
        if constant.any():
            dense[:, constant] = 0.0
        return {"sparse": torch.from_numpy(np.ascontiguousarray(sparse)),
                "dense": torch.from_numpy(dense.astype(np.float32))}

    @property
    def n_sparse_user(self) -> int:
        return self.user_rows_.shape[1]
