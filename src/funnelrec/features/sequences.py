"""Sequence features: each sample's user's most recent positive items *before* the sample.

`UserHistory` stores all events (user, item, ts) sorted by (user, ts) in flat arrays with a
CSR-style `indptr`. For a sample (u, t) the visible history is the user's events with
ts < t (strictly earlier: no leakage of the sample itself or anything after it); the last
`max_len` of them, right-aligned and padded on the left, form the sequence.

All lookups are vectorized: the end of the visible prefix of every sample is one
`np.searchsorted` on the composite key (user, ts) — no Python loop over samples.

    >>> h = UserHistory(n_users=1).fit(np.array([0, 0, 0]), np.array([5, 6, 7]), np.array([10, 20, 30]))
    >>> items, mask, ts = h.sequences(np.array([0, 0]), max_len=2, ts=np.array([25, 10]))
    >>> items.tolist(), mask.tolist()
    ([[5, 6], [-1, -1]], [[True, True], [False, False]])
"""

from __future__ import annotations

import numpy as np

from funnelrec.core.errors import ConfigError, NotFittedError


class UserHistory:
    def __init__(self, n_users: int) -> None:
        self.n_users = n_users

    def fit(self, user_idx: np.ndarray, item_idx: np.ndarray, ts: np.ndarray) -> UserHistory:
        u = np.asarray(user_idx, dtype=np.int64)
        order = np.lexsort((np.asarray(ts), u))
        self.users_ = u[order]
        self.items_ = np.asarray(item_idx, dtype=np.int64)[order]
        self.ts_ = np.asarray(ts, dtype=np.int64)[order]
        self.indptr_ = np.searchsorted(self.users_, np.arange(self.n_users + 1)).astype(np.int64)
        # rank of ts among all event times: composite key user * (R+1) + rank fits in int64
        self.times_ = np.unique(self.ts_)
        self._stride = len(self.times_) + 1
        self.key_ = self.users_ * self._stride + np.searchsorted(self.times_, self.ts_)
        return self

    def _check(self) -> None:
        if not hasattr(self, "indptr_"):
            raise NotFittedError("UserHistory is not fitted")

    def prefix_end(self, user_idx: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
        """(N,) index one past the last event of user u strictly before ts (all if ts is None)."""
        self._check()
        u = np.asarray(user_idx, dtype=np.int64)
        if ts is None:
            return self.indptr_[u + 1]
        r = np.searchsorted(self.times_, np.asarray(ts, dtype=np.int64), side="left")
        return np.searchsorted(self.key_, u * self._stride + r, side="left")

    def sequences(self, user_idx: np.ndarray, max_len: int, ts: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """items (N, L) int64 item_idx (−1 = pad), mask (N, L) bool, ts (N, L) int64 (0 = pad);
        oldest first, the most recent event in the last column."""
        if max_len < 1:
            raise ConfigError(f"max_len must be ≥ 1, got {max_len}")
        u = np.asarray(user_idx, dtype=np.int64)
        end = self.prefix_end(u, ts)
        start = self.indptr_[u]
        pos = end[:, None] - max_len + np.arange(max_len)[None, :]
        mask = pos >= start[:, None]
        safe = np.where(mask, pos, 0)
        if len(self.items_) == 0:
            return (np.full(pos.shape, -1, np.int64), np.zeros(pos.shape, bool), np.zeros(pos.shape, np.int64))
        items = np.where(mask, self.items_[safe], -1)
        times = np.where(mask, self.ts_[safe], 0)
        return items, mask, times

    def lengths(self, user_idx: np.ndarray, ts: np.ndarray | None = None) -> np.ndarray:
        """(N,) number of visible history events."""
        u = np.asarray(user_idx, dtype=np.int64)
        return self.prefix_end(u, ts) - self.indptr_[u]
