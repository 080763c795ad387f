"""Neighbourhood (item-CF / user-CF) estimates of a sample's label, as ranking features.

Similarities come from the binary TRAIN matrix M (M[u, j] = 1 iff u interacted with j) — they
never read a label — with the diagonal zeroed, so a sample's own interaction never enters its
own estimate (no leave-one-out bookkeeping needed):

    item-CF:  s_ij = (M_i · M_j / (‖M_i‖ ‖M_j‖))^p,  s_ii = 0
              est(u, i) = (Σ_j s_ij T[u, j] + m · t̄) / (Σ_j s_ij M[u, j] + m)
    user-CF:  s_uv likewise over users,
              est(u, i) = (Σ_v s_uv T[v, i] + m · t̄) / (Σ_v s_uv M[v, i] + m)

T is the 0/1 label ("label", t̄ = global positive rate) or the rating centred on the user's
TRAIN mean ("rating", t̄ = 0); p sharpens towards the closest neighbours; m is a pseudo-count.
The estimates are tabulated as dense (n_users, n_items) matrices at fit time, so a request
gathers them — fine for catalogues up to a few million user×item cells (`MAX_CELLS`); past
that, keep the top-k neighbours per item instead.

    fit(user_idx (N,), item_idx (N,), label (N,), rating (N,), n_users, n_items) -> self
    transform(user_idx (M,), item_idx (M,)) -> (M, 2) float64 [label estimate, rating estimate]

    >>> import numpy as np
    >>> u, i = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 0])
    >>> y = np.array([1.0, 1.0, 0.0, 0.0, 1.0])
    >>> cf = NeighborhoodCF("item", power=1.0, smoothing=0.0).fit(u, i, y, y, 3, 2)
    >>> cf.transform(np.array([2]), np.array([1]))[:, 0].tolist()   # item 1 from user 2's label on item 0
    [1.0]
"""

from __future__ import annotations

import numpy as np

from funnelrec.core.errors import ConfigError, DataError, NotFittedError

MAX_CELLS = 50_000_000


def _cosine_no_diag(m: np.ndarray, power: float) -> np.ndarray:
    """(C, C) cosine similarity of the columns of m (R, C), raised to `power`, diagonal 0."""
    norm = np.sqrt((m * m).sum(axis=0))
    s = (m.T @ m) / np.maximum(np.outer(norm, norm), 1e-12)
    np.fill_diagonal(s, 0.0)
    return s**power if power != 1.0 else s


class NeighborhoodCF:
    def __init__(self, kind: str = "item", power: float = 3.0, smoothing: float = 1.0) -> None:
        if kind not in ("item", "user"):
            raise ConfigError(f"NeighborhoodCF kind must be 'item' or 'user', got {kind!r}")
        if power <= 0 or smoothing < 0:
            raise ConfigError(f"power must be > 0 and smoothing ≥ 0, got {power}, {smoothing}")
        self.kind = kind
        self.power = power
        self.smoothing = smoothing

    def fit(self, user_idx, item_idx, label, rating, n_users: int, n_items: int) -> NeighborhoodCF:
        u = np.asarray(user_idx, dtype=np.int64)
        i = np.asarray(item_idx, dtype=np.int64)
        y = np.asarray(label, dtype=np.float64)
        r = np.asarray(rating, dtype=np.float64)
        if not (len(u) == len(i) == len(y) == len(r)) or len(u) == 0:
            raise DataError("NeighborhoodCF.fit: user_idx, item_idx, label, rating must be equal, non-empty lengths")
        if np.isnan(y).any() or np.isnan(r).any():
            raise DataError("NeighborhoodCF.fit: NaN labels or ratings")
        if n_users * n_items > MAX_CELLS:
            raise ConfigError(f"NeighborhoodCF tabulates n_users × n_items = {n_users * n_items:,} cells "
                              f"(> {MAX_CELLS:,}); use top-k neighbours for a catalogue this size")
        cnt_u = np.bincount(u, minlength=n_users).astype(np.float64)
        mean_u = np.bincount(u, r, n_users) / np.maximum(cnt_u, 1.0)
        mask = np.zeros((n_users, n_items))
        mask[u, i] = 1.0
        t_label = np.zeros((n_users, n_items))
        t_label[u, i] = y
        t_rating = np.zeros((n_users, n_items))
        t_rating[u, i] = r - mean_u[u]
        m = self.smoothing
        priors = (y.mean(), 0.0)
        if self.kind == "item":
            s = _cosine_no_diag(mask, self.power)
            den = mask @ s
            self.estimates_ = [(t @ s + m * p) / np.where(den + m > 0, den + m, 1.0) for t, p in zip((t_label, t_rating), priors)]
        else:
            s = _cosine_no_diag(mask.T, self.power)
            den = s @ mask
            self.estimates_ = [(s @ t + m * p) / np.where(den + m > 0, den + m, 1.0) for t, p in zip((t_label, t_rating), priors)]
        # no neighbour at all (and m = 0): the prior
        for est, p in zip(self.estimates_, priors):
            est[den + m <= 0] = p
        self.support_ = den
        return self

    def transform(self, user_idx, item_idx) -> np.ndarray:
        if not hasattr(self, "estimates_"):
            raise NotFittedError("NeighborhoodCF is not fitted; call fit first")
        u = np.asarray(user_idx, dtype=np.int64)
        i = np.asarray(item_idx, dtype=np.int64)
        return np.stack([e[u, i] for e in self.estimates_], axis=1)
