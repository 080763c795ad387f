"""Transforms of continuous features, fitted on training data only.

- `QuantileBucketizer`: boundaries = the (k/n)-quantiles of the training values; a value's
  bucket b = #{boundaries ≤ x} ∈ [0, n_buckets-1] — a categorical feature (→ FID) robust to scale.
- `log1p_transform`: x ↦ log(1 + x) for counts and durations (x ≥ 0).
- `CdfNormalizer`: x ↦ F̂(x) = #{train values ≤ x} / n ∈ [0, 1] (empirical CDF), so any
  skewed numeric feature enters a network uniformly spread.

    >>> b = QuantileBucketizer(4).fit(np.arange(100.0))
    >>> b.transform(np.array([0.0, 30.0, 99.0])).tolist()
    [0, 1, 3]
    >>> CdfNormalizer().fit(np.array([1.0, 2.0, 3.0, 4.0])).transform(np.array([2.0, 10.0])).tolist()
    [0.5, 1.0]
"""

from __future__ import annotations

import numpy as np

from funnelrec.core.errors import ConfigError, DataError, NotFittedError


def _finite(x, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if np.isnan(a).any():
        raise DataError(f"{what}: {int(np.isnan(a).sum())} NaN values in a numeric feature")
    return a


class QuantileBucketizer:
    def __init__(self, n_buckets: int = 10) -> None:
        if n_buckets < 2:
            raise ConfigError(f"n_buckets must be ≥ 2, got {n_buckets}")
        self.n_buckets = n_buckets

    def fit(self, x) -> QuantileBucketizer:
        a = _finite(x, "QuantileBucketizer.fit")
        qs = np.quantile(a, np.arange(1, self.n_buckets) / self.n_buckets)
        self.boundaries_ = np.unique(qs)
        return self

    def transform(self, x) -> np.ndarray:
        """(N,) int64 bucket ids in [0, len(boundaries_)]."""
        if not hasattr(self, "boundaries_"):
            raise NotFittedError("QuantileBucketizer is not fitted")
        return np.searchsorted(self.boundaries_, _finite(x, "QuantileBucketizer"), side="right").astype(np.int64)


def log1p_transform(x) -> np.ndarray:
    """(N,) float32 log(1 + x); negative inputs are an error (counts and durations only)."""
    a = _finite(x, "log1p")
    if (a < 0).any():
        raise DataError(f"log1p: {int((a < 0).sum())} negative values")
    return np.log1p(a).astype(np.float32)


class CdfNormalizer:
    def fit(self, x) -> CdfNormalizer:
        self.sorted_ = np.sort(_finite(x, "CdfNormalizer.fit"))
        if len(self.sorted_) == 0:
            raise DataError("CdfNormalizer.fit: no values")
        return self

    def transform(self, x) -> np.ndarray:
        """(N,) float32 empirical CDF #{train ≤ x} / n."""
        if not hasattr(self, "sorted_"):
            raise NotFittedError("CdfNormalizer is not fitted")
        a = _finite(x, "CdfNormalizer")
        return (np.searchsorted(self.sorted_, a, side="right") / len(self.sorted_)).astype(np.float32)
