"""Shared machinery of the recall channels: the user-history matrix, the seen-item exclusion and
the top-n kernels every channel ends in.

- `csr_topn(scores, n, exclude)`: top-n columns of each row of a sparse (U, I) score matrix,
  dropping scores ≤ 0 and excluded (seen) items; ties go to the lower item index. One numba
  pass over the rows, so a batch of users and the same users one by one give identical rows.
- `take_unseen_rows(lists, groups, seen, n, …)`: for channels with a precomputed ranked list
  per group (hot: one global list; geo: one per region; fresh: the recent items), the first n
  items of the user's group list that the user has not seen.

The request path (a batch of one user) builds no scipy objects: `UserHistory.rows` gathers the
users' histories as plain CSR arrays (`Rows`) in one numba pass, `spmm_topn` computes the top-n
of each row of A·B (A given as `Rows`, B a fitted CSR) with seen items excluded in one fused
numba pass (dense accumulator + touched list: work Σ_{a ∈ row} |B_a|, not the catalogue size),
and `take_unseen_rows` walks the precomputed lists. Their dense per-column buffers are allocated once
per thread and size (`scratch`) and left zeroed after every call, so a request costs no O(I)
allocation or memset even over a million-item catalogue.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

import numba
import numpy as np
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.sparse import take_rows
from funnelrec.core.types import PAD, CandidateBatch
from funnelrec.data.dataset import TrainData, interactions_csr
from funnelrec.recall.base import RecallContext


@numba.njit(cache=True, nogil=True)
def _csr_topn_kernel(indptr, indices, data, ex_indptr, ex_indices, n, n_cols):
    R = indptr.size - 1
    items = np.full((R, n), -1, np.int64)
    scores = np.full((R, n), -np.inf, np.float32)
    mark = np.zeros(n_cols, np.bool_)
    width = 0
    for r in range(R):
        width = max(width, indptr[r + 1] - indptr[r])
    buf_i = np.empty(width, np.int64)
    buf_v = np.empty(width, np.float64)
    for r in range(R):
        for p in range(ex_indptr[r], ex_indptr[r + 1]):
            mark[ex_indices[p]] = True
        cnt = 0
        for p in range(indptr[r], indptr[r + 1]):
            c = indices[p]
            v = data[p]
            if v > 0 and np.isfinite(v) and not mark[c]:
                buf_i[cnt] = c
                buf_v[cnt] = v
                cnt += 1
        for p in range(ex_indptr[r], ex_indptr[r + 1]):
            mark[ex_indices[p]] = False
        select_topk(buf_i[:cnt], buf_v[:cnt], n, items[r], scores[r])
    return items, scores


def _empty_csr(rows: int, cols: int) -> sp.csr_matrix:
    return sp.csr_matrix((rows, cols), dtype=np.float32)


def csr_topn(scores: sp.spmatrix, n: int, channel: str, exclude: sp.csr_matrix | None = None) -> CandidateBatch:
    """Top-n of each row of a sparse (U, I) score matrix as a `CandidateBatch` (U, n).
    Scores ≤ 0 and items in row u of `exclude` (U, I) are dropped; ties → lower item index.
    The matrix must hold no duplicate entries (sparse products and COO→CSR conversion give none)."""
    m = sp.csr_matrix(scores, dtype=np.float64)  # any order of columns inside a row; no duplicates
    U, I = m.shape
    ex = exclude if exclude is not None else _empty_csr(U, I)
    items, top = _csr_topn_kernel(m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data,
                                  ex.indptr.astype(np.int64), ex.indices.astype(np.int64), int(n), I)
    return CandidateBatch(channel, items, top)


class Rows(NamedTuple):
    """R rows of a sparse matrix as plain CSR arrays: row r owns idx[ptr[r]:ptr[r+1]] with weights
    dat[...] (no duplicates inside a row; column order arbitrary)."""

    ptr: np.ndarray  # (R + 1,) int64
    idx: np.ndarray  # (nnz,) int64
    dat: np.ndarray  # (nnz,) float32

    @property
    def n_rows(self) -> int:
        return self.ptr.size - 1

    @classmethod
    def empty(cls, n_rows: int) -> Rows:
        return cls(np.zeros(n_rows + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @classmethod
    def from_csr(cls, m: sp.csr_matrix) -> Rows:
        m = sp.csr_matrix(m)
        return cls(m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data.astype(np.float32))

    @classmethod
    def from_padded(cls, items: np.ndarray, scores: np.ndarray) -> Rows:
        """(R, n) PAD-filled items/scores (a `CandidateBatch`'s arrays) → Rows of the real entries."""
        keep = items != PAD
        ptr = np.zeros(items.shape[0] + 1, np.int64)
        np.cumsum(keep.sum(axis=1), out=ptr[1:])
        return cls(ptr, items[keep].astype(np.int64), scores[keep].astype(np.float32))

    def row_sums(self) -> np.ndarray:
        """(R,) Σ of each row's weights."""
        rows = np.repeat(np.arange(self.n_rows), np.diff(self.ptr))
        return np.bincount(rows, weights=self.dat, minlength=self.n_rows)

    def to_csr(self, n_cols: int) -> sp.csr_matrix:
        m = sp.csr_matrix((self.dat, self.idx, self.ptr), shape=(self.n_rows, n_cols))
        m.sort_indices()
        return m


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.bufs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


_SCRATCH = _Scratch()


def scratch(n_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This thread's dense buffers over `n_cols` columns: (acc float64 zeros, vals float64,
    state uint8 zeros, touched int64). The kernels leave acc and state zeroed."""
    b = _SCRATCH.bufs.get(n_cols)
    if b is None:
        b = (np.zeros(n_cols, np.float64), np.empty(n_cols, np.float64), np.zeros(n_cols, np.uint8),
             np.empty(n_cols, np.int64))
        _SCRATCH.bufs[n_cols] = b
    return b


@numba.njit(cache=True, nogil=True)
def _history_rows_kernel(users, ptr, idx, dat, n_users, x_ptr, x_idx, state):
    R = users.size
    cap = 0
    for r in range(R):
        u = users[r]
        if 0 <= u < n_users:
            cap += ptr[u + 1] - ptr[u]
        cap += x_ptr[r + 1] - x_ptr[r]
    out_ptr = np.zeros(R + 1, np.int64)
    out_idx = np.empty(cap, np.int64)
    out_dat = np.empty(cap, np.float32)
    pos = 0
    for r in range(R):
        u = users[r]
        for p in range(x_ptr[r], x_ptr[r + 1]):
            state[x_idx[p]] = 3
        if 0 <= u < n_users:
            for p in range(ptr[u], ptr[u + 1]):
                c = idx[p]
                w = dat[p]
                if state[c] == 3:  # also in the extra history: max(weight, 1)
                    w = max(w, np.float32(1.0))
                    state[c] = 0
                out_idx[pos] = c
                out_dat[pos] = w
                pos += 1
        for p in range(x_ptr[r], x_ptr[r + 1]):
            c = x_idx[p]
            if state[c] == 3:
                out_idx[pos] = c
                out_dat[pos] = 1.0
                pos += 1
                state[c] = 0
        out_ptr[r + 1] = pos
    return out_ptr, out_idx[:pos], out_dat[:pos]


@numba.njit(cache=True, nogil=True)
def _spmm_topn_kernel(a_ptr, a_idx, a_dat, b_ptr, b_idx, b_dat, col_scale, ex_ptr, ex_idx, n,
                      acc, vals, state, touched):
    R = a_ptr.size - 1
    items = np.full((R, n), -1, np.int64)
    scores = np.full((R, n), -np.inf, np.float32)
    scaled = col_scale.size > 0
    for r in range(R):
        for p in range(ex_ptr[r], ex_ptr[r + 1]):
            state[ex_idx[p]] = 1
        nt = 0
        for p in range(a_ptr[r], a_ptr[r + 1]):
            a = a_idx[p]
            w = np.float64(a_dat[p])
            for q in range(b_ptr[a], b_ptr[a + 1]):
                c = b_idx[q]
                s = state[c]
                if s == 1:
                    continue
                if s == 0:
                    state[c] = 2
                    touched[nt] = c
                    nt += 1
                acc[c] += w * b_dat[q]
        cnt = 0
        for t in range(nt):
            c = touched[t]
            v = acc[c] * col_scale[c] if scaled else acc[c]
            acc[c] = 0.0
            state[c] = 0
            if v > 0 and np.isfinite(v):
                touched[cnt] = c
                vals[cnt] = v
                cnt += 1
        for p in range(ex_ptr[r], ex_ptr[r + 1]):
            state[ex_idx[p]] = 0
        select_topk(touched[:cnt], vals[:cnt], n, items[r], scores[r])
    return items, scores


@numba.njit(cache=True, nogil=True)
def _take_unseen_rows_kernel(l_indptr, l_items, l_scores, groups, ex_ptr, ex_idx, n, state):
    U = groups.size
    items = np.full((U, n), -1, np.int64)
    scores = np.full((U, n), -np.inf, np.float32)
    for r in range(U):
        g = groups[r]
        if g < 0:
            continue
        for p in range(ex_ptr[r], ex_ptr[r + 1]):
            state[ex_idx[p]] = 1
        k = 0
        for p in range(l_indptr[g], l_indptr[g + 1]):
            if k >= n:
                break
            c = l_items[p]
            if state[c] == 0:
                items[r, k] = c
                scores[r, k] = l_scores[p]
                k += 1
        for p in range(ex_ptr[r], ex_ptr[r + 1]):
            state[ex_idx[p]] = 0
    return items, scores


_NO_SCALE = np.zeros(0, np.float64)


def spmm_topn(a: Rows, b: sp.csr_matrix, n: int, channel: str, exclude: Rows | None = None,
              col_scale: np.ndarray | None = None) -> CandidateBatch:
    """Top-n of each row of A·B (A (R, K) as `Rows`, B (K, C) CSR), each column c scaled by
    col_scale[c] when given; scores ≤ 0 and columns in row r of `exclude` dropped; ties → lower
    column. Equals `csr_topn(A @ B, …)` up to float rounding (accumulated in float64), and a
    row's answer does not depend on the other rows (batch = one by one)."""
    n_cols = b.shape[1]
    acc, vals, state, touched = scratch(n_cols)
    ex = exclude if exclude is not None else Rows.empty(a.n_rows)
    items, top = _spmm_topn_kernel(a.ptr, a.idx, a.dat, b.indptr, b.indices, b.data,
                                   _NO_SCALE if col_scale is None else col_scale, ex.ptr, ex.idx, int(n),
                                   acc, vals, state, touched)
    return CandidateBatch(channel, items, top)


def take_unseen_rows(list_indptr: np.ndarray, list_items: np.ndarray, list_scores: np.ndarray,
                     groups: np.ndarray, seen: Rows, n: int, n_cols: int, channel: str) -> CandidateBatch:
    """First n unseen items of each user's group list, (U, n). Lists are CSR-packed: group g owns
    list_items[list_indptr[g]:list_indptr[g+1]] (ranked, with list_scores); groups (U,), -1 = no
    list (an empty row); row r of `seen` holds user r's seen items. Builds no scipy objects."""
    state = scratch(n_cols)[2]
    items, top = _take_unseen_rows_kernel(list_indptr, list_items, list_scores, groups, seen.ptr, seen.idx,
                                          int(n), state)
    return CandidateBatch(channel, items, top)


def row_topk(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest positive entries of each row of a square/rectangular CSR matrix."""
    m = sp.csr_matrix(m)
    empty = _empty_csr(m.shape[0], m.shape[1])
    batch = csr_topn(m, k, "", empty)
    keep = batch.items != PAD
    rows = np.nonzero(keep)[0]
    out = sp.csr_matrix((batch.scores[keep].astype(np.float32), (rows, batch.items[keep])), shape=m.shape)
    out.sort_indices()
    return out


class UserHistory:
    """The users' training histories plus per-request extra history.

    `matrix(users, context)` → (H, seen): H (U, I) history weights (1, or the rating when built
    with `weights`), seen (U, I) binary. Users outside [0, n_users) (-1 = unknown) have empty
    rows. `context.extra["history"]` (a sequence of U item-index arrays) adds recent items that
    are not in the training data; item indices outside [0, n_items) are ignored. A request reads
    this object and never writes it: nothing fitted changes during a request.
    """

    def __init__(self, seen: sp.csr_matrix, weights: sp.csr_matrix | None = None) -> None:
        self.seen = sp.csr_matrix(seen, dtype=np.float32)
        self.seen.data[:] = 1.0
        self.seen.sort_indices()
        self.weights = self.seen if weights is None else sp.csr_matrix(weights, dtype=np.float32)
        self.weights.sort_indices()

    @property
    def n_users(self) -> int:
        return self.seen.shape[0]

    @property
    def n_items(self) -> int:
        return self.seen.shape[1]

    def known(self, users: np.ndarray) -> np.ndarray:
        return (users >= 0) & (users < self.n_users)

    def rows(self, users: np.ndarray, context: RecallContext | None) -> tuple[Rows, Rows]:
        """(H, seen) of `users` as `Rows` — `matrix` without scipy objects, for the request path.
        One object when H is binary. Rows list the training items first, then new extra ones."""
        state = scratch(self.n_items)[2]
        extra = None if context is None else context.extra.get("history")
        if extra is None:
            x_ptr, x_idx = np.zeros(len(users) + 1, np.int64), np.zeros(0, np.int64)
        else:
            X = self.extra_matrix(extra, len(users))
            x_ptr, x_idx = X.indptr.astype(np.int64), X.indices.astype(np.int64)
        s = self.seen
        seen = Rows(*_history_rows_kernel(users, s.indptr, s.indices, s.data, self.n_users, x_ptr, x_idx, state))
        if self.weights is s:
            return seen, seen
        w = self.weights
        H = Rows(*_history_rows_kernel(users, w.indptr, w.indices, w.data, self.n_users, x_ptr, x_idx, state))
        return H, seen

    def matrix(self, users: np.ndarray, context: RecallContext | None) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(H, seen) of `users`; one object when H is binary (callers only read them)."""
        seen = take_rows(self.seen, users)  # an unknown user gets an empty row
        binary = self.weights is self.seen
        H = seen if binary else take_rows(self.weights, users)
        extra = None if context is None else context.extra.get("history")
        if extra is not None:
            X = self.extra_matrix(extra, len(users))
            seen = seen.maximum(X).tocsr()
            H = seen if binary else H.maximum(X).tocsr()
        H.sort_indices()
        seen.sort_indices()
        return H, seen

    def with_interactions(self, users: np.ndarray, items: np.ndarray, n_users: int | None = None,
                          n_items: int | None = None) -> UserHistory:
        """A new history over (max(n_users, U), max(n_items, I)) with the pairs (users[k], items[k])
        added as seen (weight max(w, 1) where a weight matrix is kept: an online event carries no
        rating). The online learner's incremental update (recall channels' `update`); this one
        is unchanged."""
        users = np.asarray(users, np.int64).reshape(-1)
        items = np.asarray(items, np.int64).reshape(-1)
        U = max(self.n_users, n_users or 0, int(users.max(initial=-1)) + 1)
        I = max(self.n_items, n_items or 0, int(items.max(initial=-1)) + 1)
        add = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(U, I))
        add.sum_duplicates()
        add.data[:] = 1.0

        def grown(m: sp.csr_matrix) -> sp.csr_matrix:
            ptr = np.concatenate([m.indptr, np.full(U - m.shape[0], m.indptr[-1], m.indptr.dtype)])
            return sp.csr_matrix((m.data, m.indices, ptr), shape=(U, I))

        seen = grown(self.seen).maximum(add).tocsr()
        weights = None if self.weights is self.seen else grown(self.weights).maximum(add).tocsr()
        return UserHistory(seen, weights)

    def extra_matrix(self, histories: Sequence, n_rows: int) -> sp.csr_matrix:
        if len(histories) != n_rows:
            raise DataError(f"context history has {len(histories)} rows for {n_rows} users")
        arrs = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]
        lens = np.array([a.size for a in arrs], dtype=np.int64)
        cols = np.concatenate(arrs) if arrs else np.zeros(0, np.int64)
        rows = np.repeat(np.arange(n_rows), lens)
        ok = (cols >= 0) & (cols < self.n_items)
        X = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (rows[ok], cols[ok])),
                          shape=(n_rows, self.n_items))
        X.sum_duplicates()
        X.data[:] = 1.0
        return X


def rating_matrix(data: TrainData) -> sp.csr_matrix:
    """(U, I) training ratings, for channels configured with `use_rating`."""
    if "rating" not in data.interactions.columns:
        labels = ", ".join(data.dataset.schema.labels) or "none"
        raise ConfigError(f"use_rating: the interactions have no 'rating' column (labels: {labels})")
    return interactions_csr(data.interactions, data.n_users, data.n_items, "rating")


def cap_rows(m: sp.csr_matrix, cap: int, seed: int) -> sp.csr_matrix:
    """Keep at most `cap` entries per row, a seeded uniform sample (cap ≤ 0: keep all)."""
    m = sp.csr_matrix(m)
    lens = np.diff(m.indptr)
    if cap <= 0 or lens.max(initial=0) <= cap:
        return m
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(m.shape[0]), lens)
    key = rng.random(m.nnz)
    order = np.lexsort((key, rows))  # rows ascending, random order inside each row
    rank = np.arange(m.nnz) - np.repeat(m.indptr[:-1], lens)
    keep = order[rank < cap]
    out = sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)
    out.sort_indices()
    return out


def neighbours_to_csr(nbr: np.ndarray, sim: np.ndarray, n_items: int) -> sp.csr_matrix:
    """(I, k) neighbour ids (PAD = -1) and similarities → an (I, I) CSR matrix, row i = i's list."""
    keep = (nbr >= 0) & (sim > 0)
    rows = np.nonzero(keep)[0]
    out = sp.csr_matrix((sim[keep].astype(np.float32), (rows, nbr[keep])), shape=(n_items, n_items))
    out.sort_indices()
    return out


@numba.njit(cache=True, nogil=True)
def select_topk(ids, vals, k, out_ids, out_vals):
    """Write the top-k of (ids, vals) by (−val, id) into out_ids/out_vals (rows of length ≥ k);
    returns how many were written. O(m) selection + a sort of k, not a sort of all m."""
    m = ids.size
    if m == 0 or k == 0:
        return 0
    if m > k:
        thr = -np.partition(-vals, k - 1)[k - 1]
        sel_i = np.empty(k, np.int64)
        sel_v = np.empty(k, np.float64)
        c = 0
        nt = 0
        ties = np.empty(m, np.int64)
        for t in range(m):
            if vals[t] > thr:
                sel_i[c] = ids[t]
                sel_v[c] = vals[t]
                c += 1
            elif vals[t] == thr:
                ties[nt] = ids[t]
                nt += 1
        ties = np.sort(ties[:nt])
        for t in range(min(k - c, nt)):
            sel_i[c] = ties[t]
            sel_v[c] = thr
            c += 1
    else:
        c = m
        sel_i = ids.astype(np.int64)
        sel_v = vals.astype(np.float64)
    o1 = np.argsort(sel_i[:c], kind="mergesort")
    si = sel_i[:c][o1]
    sv = sel_v[:c][o1]
    o2 = np.argsort(-sv, kind="mergesort")
    for t in range(c):
        out_ids[t] = si[o2[t]]
        out_vals[t] = sv[o2[t]]
    return c


# The neighbour kernels of itemcf.py and swing.py live here, beside `select_topk`: numba's disk
# cache is per file and does not see an edit to a helper in another file (docs/ARCHITECTURE.md).
@numba.njit(parallel=True, cache=True)
def itemcf_kernel(iu_ptr, iu_idx, ui_ptr, ui_idx, user_w, k, jaccard, asym, shrink, rows):
    # rows: the items whose neighbour lists are computed (all of them in a fit; the ones an
    # online update touched in `update`); output row r is item rows[r]
    n_items = iu_ptr.size - 1
    n_rows = rows.size
    n_chunks = 64 if n_rows > 64 else max(n_rows, 1)
    chunk = (n_rows + n_chunks - 1) // n_chunks
    nbr = np.full((n_rows, k), -1, np.int64)
    sims = np.zeros((n_rows, k), np.float32)
    deg = np.empty(n_items, np.float64)
    for i in range(n_items):
        deg[i] = iu_ptr[i + 1] - iu_ptr[i]
    pow_a = deg ** asym
    pow_b = deg ** (1.0 - asym)
    for c in numba.prange(n_chunks):
        acc = np.zeros(n_items, np.float64)
        cnt = np.zeros(n_items, np.int64)
        touched = np.empty(n_items, np.int64)
        for r in range(c * chunk, min((c + 1) * chunk, n_rows)):
            i = rows[r]
            nt = 0
            for p in range(iu_ptr[i], iu_ptr[i + 1]):
                u = iu_idx[p]
                w = user_w[u]
                for q in range(ui_ptr[u], ui_ptr[u + 1]):
                    j = ui_idx[q]
                    if j == i:
                        continue
                    if cnt[j] == 0:
                        touched[nt] = j
                        nt += 1
                    acc[j] += w
                    cnt[j] += 1
            ni = iu_ptr[i + 1] - iu_ptr[i]
            ids = touched[:nt]
            vals = np.empty(nt, np.float64)
            for t in range(nt):
                j = ids[t]
                nj = iu_ptr[j + 1] - iu_ptr[j]
                if jaccard:
                    vals[t] = acc[j] / (ni + nj - cnt[j] + shrink)
                else:
                    vals[t] = acc[j] / (pow_a[i] * pow_b[j] + shrink)
                acc[j] = 0.0
                cnt[j] = 0
            select_topk(ids, vals, k, nbr[r], sims[r])
    return nbr, sims


@numba.njit(parallel=True, cache=True)
def swing_kernel(iu_ptr, iu_idx, ui_ptr, ui_idx, user_w, item_norm, alpha, k, rows):
    # rows: the items whose lists are computed (all in a fit, the touched ones in `update`)
    n_items = iu_ptr.size - 1
    n_rows = rows.size
    n_chunks = 64 if n_rows > 64 else max(n_rows, 1)
    chunk = (n_rows + n_chunks - 1) // n_chunks
    max_len = 0
    for u in range(ui_ptr.size - 1):
        max_len = max(max_len, ui_ptr[u + 1] - ui_ptr[u])
    nbr = np.full((n_rows, k), -1, np.int64)
    sims = np.zeros((n_rows, k), np.float32)
    for c in numba.prange(n_chunks):
        acc = np.zeros(n_items, np.float64)
        seen = np.zeros(n_items, np.bool_)
        touched = np.empty(n_items, np.int64)
        stamp = np.zeros(n_items, np.int64)
        inter = np.empty(max_len + 1, np.int64)
        tick = 0
        for r in range(c * chunk, min((c + 1) * chunk, n_rows)):
            i = rows[r]
            nt = 0
            s, e = iu_ptr[i], iu_ptr[i + 1]
            for a in range(s, e):
                u = iu_idx[a]
                tick += 1
                for q in range(ui_ptr[u], ui_ptr[u + 1]):
                    stamp[ui_idx[q]] = tick
                for b in range(a + 1, e):
                    v = iu_idx[b]
                    ov = 0
                    for q in range(ui_ptr[v], ui_ptr[v + 1]):
                        j = ui_idx[q]
                        if stamp[j] == tick:
                            inter[ov] = j
                            ov += 1
                    if ov < 2:
                        continue
                    w = user_w[u] * user_w[v] / (alpha + ov)
                    for t in range(ov):
                        j = inter[t]
                        if j == i:
                            continue
                        if not seen[j]:
                            seen[j] = True
                            touched[nt] = j
                            nt += 1
                        acc[j] += w
            ids = touched[:nt]
            vals = np.empty(nt, np.float64)
            for t in range(nt):
                vals[t] = acc[ids[t]] / (item_norm[i] * item_norm[ids[t]])
                acc[ids[t]] = 0.0
                seen[ids[t]] = False
            select_topk(ids, vals, k, nbr[r], sims[r])
    return nbr, sims
