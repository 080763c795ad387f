"""Negative samplers and hot-positive down-sampling for retrieval training.

A sampler draws, for each user of a batch, `n` item indices that serve as negatives. The
*forbidden* pairs — the user's positives, and the items the user was shown but did not click
(exposed-not-clicked) — are never returned: in recall, an exposed-but-skipped item is a hard
*ranking* negative, not an irrelevant item, and training the retriever to push it away teaches
it the ranker's job (the field's standard advice; see e.g. Huang et al., "Embedding-based
Retrieval in Facebook Search", KDD 2020). A forbidden draw is redrawn, up to `max_tries`.

    >>> import numpy as np, scipy.sparse as sp
    >>> pos = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 1, 0]], dtype=np.float32))
    >>> s = UniformSampler(4, forbidden=pos)
    >>> neg = s.sample(np.array([0, 1]), 3, np.random.default_rng(0))
    >>> neg.shape, bool((neg[0] != 0).all()), bool(np.isin(neg[1], [1, 2]).any())
    ((2, 3), True, False)

Proposal probabilities `q(i)` (`sampler.probabilities()`) feed the logQ correction of sampled
softmax (Yi et al., "Sampling-bias-corrected neural modeling", RecSys 2019).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.types import PAD


class ForbiddenPairs:
    """A set of (user, item) pairs with vectorized membership: keys u·I + i, sorted."""

    def __init__(self, n_items: int, *matrices: sp.spmatrix | None) -> None:
        self.n_items = int(n_items)
        keys = []
        for m in matrices:
            if m is None:
                continue
            if m.shape[1] != n_items:
                raise DataError(f"forbidden matrix has {m.shape[1]} item columns, expected {n_items}")
            coo = sp.coo_matrix(m)
            keep = coo.data != 0
            keys.append(coo.row[keep].astype(np.int64) * self.n_items + coo.col[keep].astype(np.int64))
        self.keys = np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean array, broadcast shape of `users` and `items`: True where (u, i) is forbidden."""
        if not len(self.keys):
            return np.zeros(np.broadcast_shapes(np.shape(users), np.shape(items)), bool)
        q = np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64)
        pos = np.searchsorted(self.keys, q)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == q


class NegativeSampler(ABC):
    """Draws `(B, n)` negatives from a proposal distribution q over items, rejecting forbidden
    (user, item) pairs. `forbidden` is any number of user × item matrices (nonzero = forbidden)."""

    def __init__(self, n_items: int, forbidden: sp.spmatrix | ForbiddenPairs | None = None,
                 exposed: sp.spmatrix | None = None, max_tries: int = 20) -> None:
        if n_items < 2:
            raise ConfigError(f"a negative sampler needs at least 2 items, got {n_items}")
        self.n_items = int(n_items)
        if isinstance(forbidden, ForbiddenPairs):
            if exposed is not None:
                forbidden = ForbiddenPairs(n_items, *_pairs_to_csr(forbidden), exposed)
            self.forbidden = forbidden
        else:
            self.forbidden = ForbiddenPairs(n_items, forbidden, exposed)
        self.max_tries = max_tries

    @abstractmethod
    def probabilities(self) -> np.ndarray:
        """(I,) float64 proposal distribution q (before rejection of forbidden pairs)."""

    @abstractmethod
    def _draw(self, size: tuple[int, ...], rng: np.random.Generator) -> np.ndarray: ...

    def sample(self, users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """(B, n) int64 negatives for the B users; forbidden pairs redrawn up to max_tries
        times (a user whose every item is forbidden keeps the last draw)."""
        users = np.asarray(users, np.int64).reshape(-1)
        out = self._draw((len(users), n), rng)
        bad = self.forbidden.contains(users[:, None], out)
        for _ in range(self.max_tries):
            if not bad.any():
                break
            r, c = np.nonzero(bad)
            out[r, c] = self._draw((len(r),), rng)
            bad[r, c] = self.forbidden.contains(users[r], out[r, c])
        return out


class UniformSampler(NegativeSampler):
    """q(i) = 1/I."""

    def probabilities(self) -> np.ndarray:
        return np.full(self.n_items, 1.0 / self.n_items)

    def _draw(self, size, rng):
        return rng.integers(0, self.n_items, size=size, dtype=np.int64)


class PopularitySampler(NegativeSampler):
    """q(i) ∝ count(i)^power (word2vec's unigram^0.75 by default); count 0 gets q = 0 unless
    `smoothing` > 0 is added to every count."""

    def __init__(self, item_counts: np.ndarray, power: float = 0.75, smoothing: float = 0.0,
                 forbidden: sp.spmatrix | ForbiddenPairs | None = None, exposed: sp.spmatrix | None = None,
                 max_tries: int = 20) -> None:
        counts = np.asarray(item_counts, np.float64)
        if counts.ndim != 1 or (counts < 0).any():
            raise DataError("item_counts must be a 1-D array of non-negative counts")
        super().__init__(len(counts), forbidden, exposed, max_tries)
        w = (counts + smoothing) ** power
        if w.sum() <= 0:
            raise DataError("popularity sampler: all item counts are zero")
        self._q = w / w.sum()
        self._cdf = np.cumsum(self._q)
        self._cdf[-1] = 1.0

    def probabilities(self) -> np.ndarray:
        return self._q

    def _draw(self, size, rng):
        return np.searchsorted(self._cdf, rng.random(size), side="right").astype(np.int64)


class MixedHardSampler:
    """Hard + easy negatives (Facebook EBR): a share `hard_ratio` of each user's n negatives is
    drawn uniformly from that user's *hard pool* — items a recall model retrieved but ranked
    low, supplied by the caller as a (U, H) matrix padded with PAD — and the rest from `easy`.
    Forbidden pairs of `easy` are never drawn from the hard pool either. A user with no usable
    hard item gets all n from `easy`."""

    def __init__(self, easy: NegativeSampler, hard_ratio: float = 0.5) -> None:
        if not 0.0 <= hard_ratio <= 1.0:
            raise ConfigError(f"hard_ratio must be in [0, 1], got {hard_ratio}")
        self.easy = easy
        self.hard_ratio = hard_ratio
        self.n_items = easy.n_items

    def probabilities(self) -> np.ndarray:
        return self.easy.probabilities()

    def sample(self, users: np.ndarray, n: int, rng: np.random.Generator,
               hard_pool: np.ndarray | None = None) -> np.ndarray:
        """(B, n) negatives; `hard_pool` is (B, H) item indices for these users (PAD = none)."""
        users = np.asarray(users, np.int64).reshape(-1)
        out = self.easy.sample(users, n, rng)
        n_hard = int(round(n * self.hard_ratio))
        if hard_pool is None or n_hard == 0:
            return out
        pool = np.asarray(hard_pool, np.int64)
        if pool.shape[0] != len(users):
            raise DataError(f"hard_pool has {pool.shape[0]} rows for {len(users)} users")
        valid = pool != PAD
        valid &= ~self.easy.forbidden.contains(users[:, None], np.where(valid, pool, 0))
        n_valid = valid.sum(axis=1)
        has = n_valid > 0
        if not has.any():
            return out
        # compact each row's valid entries to the front (stable sort keeps the pool's order)
        order = np.argsort(~valid, axis=1, kind="stable")
        packed = np.take_along_axis(pool, order, axis=1)
        rows = np.nonzero(has)[0]
        pick = (rng.random((len(rows), n_hard)) * n_valid[rows, None]).astype(np.int64)
        out[rows, :n_hard] = np.take_along_axis(packed[rows], pick, axis=1)
        return out


def subsample_positives(item_ids: np.ndarray, threshold: float, rng: np.random.Generator) -> np.ndarray:
    """word2vec-style down-sampling of hot positives: keep a row of item i with probability
    p(i) = min(1, sqrt(t / f(i)) + t / f(i)), f(i) = item i's share of all rows (Mikolov et
    al. 2013, the formula of the reference C code). Returns a boolean keep-mask; t ≤ 0 keeps all."""
    item_ids = np.asarray(item_ids, np.int64)
    if threshold <= 0 or not len(item_ids):
        return np.ones(len(item_ids), bool)
    return rng.random(len(item_ids)) < keep_probability(item_ids, threshold)


def keep_probability(item_ids: np.ndarray, threshold: float) -> np.ndarray:
    """Per-row keep probability of `subsample_positives` (see its formula)."""
    _, inv, cnt = np.unique(item_ids, return_inverse=True, return_counts=True)
    f = cnt[inv] / len(item_ids)
    r = threshold / f
    return np.minimum(1.0, np.sqrt(r) + r)


def _pairs_to_csr(fp: ForbiddenPairs) -> list[sp.csr_matrix]:
    if not len(fp.keys):
        return []
    u, i = np.divmod(fp.keys, fp.n_items)
    n_users = int(u.max()) + 1
    return [sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(n_users, fp.n_items))]


SAMPLERS = ("uniform", "pop075", "mixed_hard")


def build_sampler(name: str, n_items: int, item_counts: np.ndarray, forbidden: sp.spmatrix | None,
                  exposed: sp.spmatrix | None = None, hard_ratio: float = 0.5) -> NegativeSampler | MixedHardSampler:
    """'uniform' | 'pop075' | 'mixed_hard' (hard pool + uniform easy negatives)."""
    if name == "uniform":
        return UniformSampler(n_items, forbidden, exposed)
    if name == "pop075":
        return PopularitySampler(item_counts, 0.75, smoothing=1.0, forbidden=forbidden, exposed=exposed)
    if name == "mixed_hard":
        return MixedHardSampler(UniformSampler(n_items, forbidden, exposed), hard_ratio)
    raise ConfigError(f"unknown negative sampler {name!r}; known: {', '.join(SAMPLERS)}")
