import numpy as np
import pytest
from scipy.stats import percentileofscore
from sklearn.preprocessing import KBinsDiscretizer

from funnelrec.core.errors import DataError
from funnelrec.features.transforms import CdfNormalizer, QuantileBucketizer, log1p_transform


def test_cdf_matches_scipy():
    rng = np.random.default_rng(0)
    train = rng.exponential(size=500)
    x = np.r_[rng.exponential(size=50), train[:5], -1.0, 100.0]
    got = CdfNormalizer().fit(train).transform(x)
    want = [percentileofscore(train, v, kind="weak") / 100 for v in x]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_quantile_buckets_match_sklearn():
    rng = np.random.default_rng(1)
    train = rng.lognormal(size=1000)
    x = rng.lognormal(size=200)
    kb = KBinsDiscretizer(n_bins=8, encode="ordinal", strategy="quantile", quantile_method="linear")
    kb.fit(train[:, None])
    want = np.searchsorted(kb.bin_edges_[0][1:-1], x, side="right")
    got = QuantileBucketizer(8).fit(train).transform(x)
    assert (got == want).all()
    assert got.min() >= 0 and got.max() <= 7


def test_log1p_and_bad_values():
    np.testing.assert_allclose(log1p_transform([0, np.e - 1]), [0, 1], rtol=1e-6)
    with pytest.raises(DataError, match="negative"):
        log1p_transform([-1.0])
    with pytest.raises(DataError, match="NaN"):
        CdfNormalizer().fit(np.array([1.0, np.nan]))
