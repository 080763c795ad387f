"""Negative samplers: distributions, forbidden pairs, hard/easy mixing, hot-positive subsampling."""

import numpy as np
import pytest
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.types import PAD
from funnelrec.train.samplers import (
    ForbiddenPairs,
    MixedHardSampler,
    PopularitySampler,
    UniformSampler,
    build_sampler,
    keep_probability,
    subsample_positives,
)


def test_forbidden_pairs_match_scipy_lookup():
    rng = np.random.default_rng(0)
    m = sp.random(30, 50, density=0.2, format="csr", random_state=1)
    fp = ForbiddenPairs(50, m)
    u = rng.integers(0, 30, 2000)
    i = rng.integers(0, 50, 2000)
    expect = np.asarray(m[u, i]).ravel() != 0
    np.testing.assert_array_equal(fp.contains(u, i), expect)


def test_pop075_frequencies_match_expected_probabilities():
    counts = np.array([0, 1, 4, 9, 16, 100, 400, 2])
    s = PopularitySampler(counts, power=0.75)
    expect = counts ** 0.75 / (counts ** 0.75).sum()  # hand formula q(i) ∝ c_i^0.75
    np.testing.assert_allclose(s.probabilities(), expect)
    draws = s.sample(np.zeros(1000, np.int64), 200, np.random.default_rng(3))  # 200k draws
    freq = np.bincount(draws.ravel(), minlength=len(counts)) / draws.size
    np.testing.assert_allclose(freq, expect, atol=0.004)
    assert freq[0] == 0.0  # count 0 → never drawn


def test_exposed_not_clicked_and_positives_never_sampled():
    n_items = 12
    pos = sp.csr_matrix(([1.0, 1.0], ([0, 1], [0, 5])), shape=(2, n_items))
    exposed = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 0], [1, 2, 3])), shape=(2, n_items))
    for sampler in (UniformSampler(n_items, pos, exposed),
                    PopularitySampler(np.ones(n_items) * 5, forbidden=pos, exposed=exposed)):
        neg = sampler.sample(np.zeros(5000, np.int64), 4, np.random.default_rng(1))
        assert not np.isin(neg, [0, 1, 2, 3]).any()
        # the remaining 8 items share the draws evenly (rejection keeps q renormalized)
        freq = np.bincount(neg.ravel(), minlength=n_items)[4:] / neg.size
        np.testing.assert_allclose(freq, 1 / 8, atol=0.01)
        # user 1 only loses item 5; exposure of user 0 does not leak to user 1
        neg1 = sampler.sample(np.ones(2000, np.int64), 4, np.random.default_rng(2))
        assert not (neg1 == 5).any() and np.isin(neg1, [1, 2, 3]).any()


def test_mixed_hard_ratio_and_pool_filtering():
    n_items = 10_000
    pool_items = np.arange(100, 110)
    pos = sp.csr_matrix(([1.0], ([0], [100])), shape=(1, n_items))  # item 100 is a positive
    easy = UniformSampler(n_items, pos)
    s = MixedHardSampler(easy, hard_ratio=0.5)
    users = np.zeros(4000, np.int64)
    pool = np.tile(np.r_[pool_items, [PAD, PAD]], (len(users), 1))
    neg = s.sample(users, 10, np.random.default_rng(0), hard_pool=pool)
    assert np.isin(neg[:, :5], pool_items[1:]).all()  # 5 of 10 hard, never the forbidden 100
    frac = np.isin(neg, pool_items).mean()
    assert abs(frac - (0.5 + 0.5 * 10 / n_items)) < 0.01
    # hard slots cover the usable pool uniformly (9 items)
    f = np.bincount(neg[:, :5].ravel(), minlength=n_items)[101:110] / neg[:, :5].size
    np.testing.assert_allclose(f, 1 / 9, atol=0.01)
    # a user with an empty pool gets only easy negatives
    empty = np.full((3, 4), PAD)
    out = s.sample(np.zeros(3, np.int64), 10, np.random.default_rng(0), hard_pool=empty)
    assert out.shape == (3, 10) and not (out == 100).any()


def test_hot_positive_subsampling_follows_word2vec_formula():
    items = np.r_[np.zeros(9000, np.int64), np.arange(1, 1001)]  # item 0 takes 90% of rows
    t = 1e-2
    p = keep_probability(items, t)
    f0 = 0.9
    assert p[0] == pytest.approx(np.sqrt(t / f0) + t / f0)
    assert p[-1] == 1.0  # rare item f = 1e-4 < t → always kept
    keep = subsample_positives(items, t, np.random.default_rng(0))
    assert keep[:9000].mean() == pytest.approx(p[0], abs=0.01)
    assert keep[9000:].all()
    assert subsample_positives(items, 0.0, np.random.default_rng(0)).all()


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ConfigError, match="unknown negative sampler"):
        build_sampler("nope", 10, np.ones(10), None)
    with pytest.raises(DataError, match="non-negative"):
        PopularitySampler(np.array([1.0, -1.0]))
    with pytest.raises(ConfigError, match="hard_ratio"):
        MixedHardSampler(UniformSampler(5), hard_ratio=1.5)
