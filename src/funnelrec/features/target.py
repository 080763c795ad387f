"""Target encoding: posterior statistics of a key (user, item, user×genre, item×gender, …)
computed on TRAINING interactions, out-of-fold for the training rows themselves.

For a key k (codes c(row) — one code, or several for a multi-valued column, pooled) and a
target value t (the 0/1 label → posterior CTR, or the raw rating):

    TE(row) = (Σ_{c ∈ c(row)} S'[c] + m · t̄) / (Σ_{c ∈ c(row)} N'[c] + m)

with S[c] = Σ t and N[c] = #rows over the training rows carrying code c, t̄ the global training
mean and m the smoothing pseudo-count. For a row that IS a training row (its (user, item) pair
was in the fitted interactions) S', N' exclude the block holding it, so its own label never
enters its feature (the train/serve skew of in-sample statistics):

- `n_folds ≥ 2`: K-fold — every training pair is hashed to a fold f; S'[c] = S[c] − S_f[c];
- `n_folds == 0`: leave-one-out — S'[c] = S[c] − (Σ t over the rows of the row's own pair).

Rows that are not training pairs (validation, test, serving candidates) see the full statistics.

    fit(codes (N, W) int64 [-1 = pad], values (N, V) float64, pairs (N,) int64) -> self
    transform(codes (M, W), pairs (M,)) -> (M, V) float64 target encodings,
        counts (M,) float64 Σ N'[c]

    >>> import numpy as np
    >>> te = TargetEncoder(n_folds=0, smoothing=0.0)
    >>> codes = np.array([[0], [0], [0], [1]])                  # 3 rows of key 0, 1 row of key 1
    >>> y = np.array([[1.0], [0.0], [0.0], [1.0]])
    >>> te = te.fit(codes, y, pairs=np.arange(4), n_codes=2)
    >>> te.transform(codes[:1], np.array([0]))[0].tolist()      # row 0 left out: (0 + 0) / 2
    [[0.0]]
    >>> te.transform(codes[:1], np.array([99]))[0].tolist()     # an unseen pair: (1 + 0 + 0) / 3
    [[0.3333333333333333]]
"""

from __future__ import annotations

import numpy as np

from funnelrec.core.errors import ConfigError, DataError, NotFittedError


def _fold_of(pairs: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Deterministic fold in [0, n_folds) of each pair key (splitmix64 hash of key ⊕ seed)."""
    with np.errstate(over="ignore"):
        z = pairs.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_folds)).astype(np.int64)


class TargetEncoder:
    def __init__(self, n_folds: int = 5, smoothing: float = 10.0, seed: int = 0) -> None:
        if n_folds == 1 or n_folds < 0:
            raise ConfigError(f"n_folds must be 0 (leave-one-out) or ≥ 2, got {n_folds}")
        if smoothing < 0:
            raise ConfigError(f"smoothing must be ≥ 0, got {smoothing}")
        self.n_folds = n_folds
        self.smoothing = smoothing
        self.seed = seed

    def fit(self, codes: np.ndarray, values: np.ndarray, pairs: np.ndarray, n_codes: int) -> TargetEncoder:
        codes = np.asarray(codes, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        pairs = np.asarray(pairs, dtype=np.int64)
        if codes.ndim != 2 or values.ndim != 2 or len(codes) != len(values) or len(pairs) != len(codes):
            raise DataError(f"TargetEncoder.fit: codes (N, W), values (N, V), pairs (N,) expected, got "
                            f"{codes.shape}, {values.shape}, {pairs.shape}")
        if np.isnan(values).any():
            raise DataError(f"TargetEncoder.fit: {int(np.isnan(values).sum())} NaN target values")
        if len(codes) == 0:
            raise DataError("TargetEncoder.fit: no training rows")
        if codes.max() >= n_codes:
            raise DataError(f"TargetEncoder.fit: code {codes.max()} ≥ n_codes {n_codes}")
        n_val = values.shape[1]
        self.n_codes_ = n_codes
        self.prior_ = values.mean(axis=0)
        rows, cols = np.nonzero(codes >= 0)
        c = codes[rows, cols]
        self.count_ = np.bincount(c, minlength=n_codes).astype(np.float64)
        self.sum_ = np.stack([np.bincount(c, values[rows, v], n_codes) for v in range(n_val)], axis=1)
        # the held-out blocks: pair → (fold) or pair → own sums
        order = np.argsort(pairs, kind="stable")
        self.pair_keys_, start = np.unique(pairs[order], return_index=True)
        if self.n_folds:
            fold = _fold_of(pairs, self.n_folds, self.seed)
            self.pair_fold_ = _fold_of(self.pair_keys_, self.n_folds, self.seed)
            key = c * self.n_folds + fold[rows]
            size = n_codes * self.n_folds
            self.fold_count_ = np.bincount(key, minlength=size).astype(np.float64)
            self.fold_sum_ = np.stack([np.bincount(key, values[rows, v], size) for v in range(n_val)], axis=1)
        else:
            # codes are a function of the pair, so all rows of a pair share them: store the pair's
            # row count and value sums and subtract them once per code
            self.pair_rows_ = np.diff(np.append(start, len(pairs))).astype(np.float64)
            self.pair_sum_ = np.add.reduceat(values[order], start, axis=0)
        return self

    def transform(self, codes: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, V) smoothed target means and (M,) the pooled counts Σ N'[c] behind them."""
        if not hasattr(self, "sum_"):
            raise NotFittedError("TargetEncoder is not fitted; call fit first")
        codes = np.asarray(codes, dtype=np.int64)
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1)
        valid = codes >= 0
        safe = np.where(valid, codes, 0)
        n = (self.count_[safe] * valid).sum(axis=1)
        s = (self.sum_[safe] * valid[:, :, None]).sum(axis=1)
        pos = np.searchsorted(self.pair_keys_, pairs).clip(0, max(len(self.pair_keys_) - 1, 0))
        seen = self.pair_keys_[pos] == pairs
        if seen.any():
            if self.n_folds:
                key = safe[seen] * self.n_folds + self.pair_fold_[pos[seen]][:, None]
                v = valid[seen]
                n[seen] -= (self.fold_count_[key] * v).sum(axis=1)
                s[seen] -= (self.fold_sum_[key] * v[:, :, None]).sum(axis=1)
            else:
                # the pair's rows add t to S[c] once per occurrence of c among their codes, and
                # the query sums S over the same codes: Σ_w mult(c_w) = #{(w, w'): c_w = c_w'}
                cs, v = codes[seen], valid[seen]
                k = ((cs[:, :, None] == cs[:, None, :]) & v[:, :, None] & v[:, None, :]).sum(axis=(1, 2))
                k = k.astype(np.float64)
                n[seen] -= self.pair_rows_[pos[seen]] * k
                s[seen] -= self.pair_sum_[pos[seen]] * k[:, None]
        m = self.smoothing
        n = np.maximum(n, 0.0)
        te = (s + m * self.prior_) / np.maximum(n + m, 1e-12)[:, None]
        te[n + m <= 0] = self.prior_
        return te, n
