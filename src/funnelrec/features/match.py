"""Match features: how often the user's past history matches the candidate.

For an attribute a (item id, tag, author …) with values A(i) ⊆ vocabulary for item i:

    match_a(u, i, t) = Σ_{v ∈ A(i)} #{history events (u, j, s) : s < t, v ∈ A(j)}

i.e. per-value counts of the user's earlier events, summed over the candidate's values. For a
single-valued attribute (item id, author when one per item) it is exactly the number of history
items sharing the candidate's value. Only events strictly before t are counted (no leakage);
t = None counts the whole history (serving).

Vectorized with sorted composite keys (user, value, time-rank): a count is two
`np.searchsorted`s; candidate values are exploded with `np.repeat` and summed back with
`np.add.reduceat`.

    >>> m = MatchCounter(n_users=1).fit(np.array([0, 0]), np.array([0, 1]), np.array([1, 2]),
    ...     item_values=[[7], [7, 8], [8]])
    >>> m.count(np.array([0, 0]), np.array([1, 0]), ts=np.array([5, 2])).tolist()
    [3, 1]
"""

from __future__ import annotations

import numpy as np

from funnelrec.core.errors import NotFittedError


def _ragged(values: list) -> tuple[np.ndarray, np.ndarray]:
    """list of per-item value lists → (indptr (n+1,), flat codes) with dense codes per value."""
    lengths = np.array([len(v) if v is not None else 0 for v in values], dtype=np.int64)
    flat = [x for v in values if v is not None for x in v]
    codes = np.unique(np.asarray(flat, dtype=object).astype(str), return_inverse=True)[1] if flat else np.zeros(0)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return indptr, np.asarray(codes, dtype=np.int64).reshape(-1)


class MatchCounter:
    def __init__(self, n_users: int) -> None:
        self.n_users = n_users

    def fit(self, user_idx, item_idx, ts, item_values: list | None = None, weights=None) -> MatchCounter:
        """Events (user_idx, item_idx, ts); item_values[i] = values of item i (None → the item id);
        weights (per event, e.g. the label) are summed by `count(..., weighted=True)`."""
        u = np.asarray(user_idx, dtype=np.int64)
        i = np.asarray(item_idx, dtype=np.int64)
        t = np.asarray(ts, dtype=np.int64)
        if item_values is None:
            n_items = int(i.max()) + 1 if len(i) else 0
            self.item_indptr_ = np.arange(n_items + 1, dtype=np.int64)
            self.item_codes_ = np.arange(n_items, dtype=np.int64)
        else:
            self.item_indptr_, self.item_codes_ = _ragged(item_values)
        self.n_values_ = int(self.item_codes_.max()) + 1 if len(self.item_codes_) else 1
        lens = self.item_indptr_[i + 1] - self.item_indptr_[i]
        eu, et = np.repeat(u, lens), np.repeat(t, lens)
        ev = self._values_of(i, lens)
        self.times_ = np.unique(et)
        self._stride = len(self.times_) + 1
        key = (eu * self.n_values_ + ev) * self._stride + np.searchsorted(self.times_, et)
        order = np.argsort(key, kind="stable")
        self.key_ = key[order]
        w = np.ones(len(u)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.cum_w_ = np.concatenate([[0.0], np.cumsum(np.repeat(w, lens)[order])])
        return self

    def _values_of(self, items: np.ndarray, lens: np.ndarray) -> np.ndarray:
        starts = np.repeat(self.item_indptr_[items], lens)
        offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        return self.item_codes_[starts + offs]

    def count(self, user_idx, item_idx, ts=None, weighted: bool = False) -> np.ndarray:
        """(N,) int64 match counts for candidates (user_idx[k], item_idx[k]) at time ts[k]
        (float64 sums of the event weights if `weighted`)."""
        if not hasattr(self, "key_"):
            raise NotFittedError("MatchCounter is not fitted")
        u = np.asarray(user_idx, dtype=np.int64)
        i = np.asarray(item_idx, dtype=np.int64)
        n = len(u)
        n_known = len(self.item_indptr_) - 1
        ok = (i >= 0) & (i < n_known)
        ic = np.where(ok, i, 0)
        lens = np.where(ok, self.item_indptr_[ic + 1] - self.item_indptr_[ic], 0)
        dtype = np.float64 if weighted else np.int64
        if lens.sum() == 0:
            return np.zeros(n, dtype=dtype)
        vals = self._values_of(ic, lens)
        group = (np.repeat(u, lens) * self.n_values_ + vals) * self._stride
        lo = np.searchsorted(self.key_, group, side="left")
        if ts is None:
            hi = np.searchsorted(self.key_, group + self._stride, side="left")
        else:
            r = np.searchsorted(self.times_, np.repeat(np.asarray(ts, dtype=np.int64), lens), side="left")
            hi = np.searchsorted(self.key_, group + r, side="left")
        per = self.cum_w_[hi] - self.cum_w_[lo] if weighted else hi - lo
        out = np.zeros(n, dtype=dtype)
        np.add.at(out, np.repeat(np.arange(n), lens), per)
        return out
