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

`similarity="centered"` computes s from the user-centred ratings instead (adjusted cosine,
Sarwar et al. 2001; negative similarities clipped to 0) — much stronger (valid AUC of the
item-CF label estimate alone on ml-100k: 0.781 vs 0.740), but it reads labels, so a training
row's own label would enter its own similarity. Training pairs therefore get out-of-fold
values: the pairs are hashed into `n_folds` folds, and fold f's estimates come from a model
fitted without fold f (stacking); other samples use the model fitted on all training rows.
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
from funnelrec.features.target import _fold_of

MAX_CELLS = 50_000_000


def _cosine_no_diag(m: np.ndarray, power: float) -> np.ndarray:
    """(C, C) cosine similarity of the columns of m (R, C), raised to `power`, diagonal 0."""
    norm = np.sqrt((m * m).sum(axis=0))
    s = (m.T @ m) / np.maximum(np.outer(norm, norm), 1e-12)
    np.fill_diagonal(s, 0.0)
    np.clip(s, 0.0, None, out=s)  # centred ratings can anti-correlate: no negative weights
    return s**power if power != 1.0 else s


class NeighborhoodCF:
    def __init__(self, kind: str = "item", power: float = 3.0, smoothing: float = 1.0,
                 similarity: str = "binary", n_folds: int = 5) -> None:
        if kind not in ("item", "user"):
            raise ConfigError(f"NeighborhoodCF kind must be 'item' or 'user', got {kind!r}")
        if similarity not in ("binary", "centered"):
            raise ConfigError(f"similarity must be 'binary' or 'centered', got {similarity!r}")
        if similarity == "centered" and n_folds < 2:
            raise ConfigError(f"centered similarity needs n_folds ≥ 2 for out-of-fold training values, got {n_folds}")
        self.similarity = similarity
        self.n_folds = n_folds
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
        self.n_items_ = n_items
        self.estimates_, self.support_ = self._estimates(u, i, y, r, n_users, n_items)
        self.pair_keys_ = np.zeros(0, dtype=np.int64)
        if self.similarity == "centered":
            pairs = u * n_items + i
            fold = _fold_of(pairs, self.n_folds, seed=1)
            keys, oof = [], []
            for f in range(self.n_folds):
                out, inn = fold == f, fold != f
                est, _ = self._estimates(u[inn], i[inn], y[inn], r[inn], n_users, n_items)
                keys.append(pairs[out])
                oof.append(np.stack([e[u[out], i[out]] for e in est], axis=1))
            keys, oof = np.concatenate(keys), np.concatenate(oof)
            order = np.argsort(keys, kind="stable")
            self.pair_keys_, self.pair_values_ = keys[order], oof[order]
        return self

    def _estimates(self, u, i, y, r, n_users: int, n_items: int) -> tuple[list[np.ndarray], np.ndarray]:
        cnt_u = np.bincount(u, minlength=n_users).astype(np.float64)
        mean_u = np.bincount(u, r, n_users) / np.maximum(cnt_u, 1.0)
        mask = np.zeros((n_users, n_items))
        mask[u, i] = 1.0
        t_label = np.zeros((n_users, n_items))
        t_label[u, i] = y
        t_rating = np.zeros((n_users, n_items))
        t_rating[u, i] = r - mean_u[u]
        basis = mask if self.similarity == "binary" else t_rating
        m = self.smoothing
        priors = (y.mean(), 0.0)
        if self.kind == "item":
            s = _cosine_no_diag(basis, self.power)
            den = mask @ s
            est = [(t @ s + m * p) / np.where(den + m > 0, den + m, 1.0) for t, p in zip((t_label, t_rating), priors)]
        else:
            s = _cosine_no_diag(basis.T, self.power)
            den = s @ mask
            est = [(s @ t + m * p) / np.where(den + m > 0, den + m, 1.0) for t, p in zip((t_label, t_rating), priors)]
        for e, p in zip(est, priors):  # no neighbour at all (and m = 0): the prior
            e[den + m <= 0] = p
        return est, den

    def transform(self, user_idx, item_idx) -> np.ndarray:
        if not hasattr(self, "estimates_"):
            raise NotFittedError("NeighborhoodCF is not fitted; call fit first")
        u = np.asarray(user_idx, dtype=np.int64).reshape(-1)
        i = np.asarray(item_idx, dtype=np.int64).reshape(-1)
        out = np.stack([e[u, i] for e in self.estimates_], axis=1)
        if len(self.pair_keys_):
            pairs = u * self.n_items_ + i
            pos = np.searchsorted(self.pair_keys_, pairs).clip(0, len(self.pair_keys_) - 1)
            seen = self.pair_keys_[pos] == pairs
            out[seen] = self.pair_values_[pos[seen]]
        return out
