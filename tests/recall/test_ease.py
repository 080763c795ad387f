"""EASE recall against its definition: B column j = ridge regression of item j on the other
items (scikit-learn, no intercept), scores = history · B, top-n unseen with a positive score."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.types import PAD
from funnelrec.recall.base import RecallContext
from funnelrec.recall.ease import EASEConfig, EASERecall


def test_ease_weights_and_scores_follow_the_definition(world):
    lam = 3.0
    ch = EASERecall(EASEConfig(lam=lam)).fit(world)
    X = world.csr.toarray().astype(np.float64)
    for j in (0, 5, world.n_items - 1):
        others = [c for c in range(world.n_items) if c != j]
        w = Ridge(alpha=lam, fit_intercept=False).fit(X[:, others], X[:, j]).coef_
        np.testing.assert_allclose(ch.B_[others, j], w, rtol=1e-4, atol=1e-5)
        assert ch.B_[j, j] == 0
    users = np.arange(world.n_users)
    b = ch.recall(users, 6)
    S = X @ ch.B_.astype(np.float64)
    for u in users:
        s = np.where(X[u] > 0, -np.inf, S[u])
        got = b.items[u][b.items[u] != PAD]
        want = [i for i in np.lexsort((np.arange(len(s)), -s)) if s[i] > 0][:6]
        np.testing.assert_allclose(b.scores[u][: len(got)], s[want][: len(got)], rtol=1e-4)
        assert len(got) == len(want) and not (X[u, got] > 0).any()


def test_edlae_is_ridge_with_a_penalty_per_item_that_grows_with_its_count(world):
    # EDLAE (dropout p): column j = ridge regression of item j on the others with penalty
    # λ + p/(1−p)·count(k) on coefficient k; as scikit-learn's scalar ridge (α = 1) on the
    # features scaled by 1/√penalty, coefficients scaled back
    lam, p = 3.0, 0.25
    ch = EASERecall(EASEConfig(lam=lam, dropout=p)).fit(world)
    X = world.csr.toarray().astype(np.float64)
    pen = lam + p / (1 - p) * (X * X).sum(0)
    for j in (0, 5, world.n_items - 1):
        others = [c for c in range(world.n_items) if c != j]
        scale = np.sqrt(pen[others])
        w = Ridge(alpha=1.0, fit_intercept=False).fit(X[:, others] / scale, X[:, j]).coef_ / scale
        np.testing.assert_allclose(ch.B_[others, j], w, rtol=1e-4, atol=1e-5)
        assert ch.B_[j, j] == 0
    plain = EASERecall(EASEConfig(lam=lam)).fit(world)
    assert np.abs(plain.B_ - ch.B_).max() > 1e-3  # the dropout changed the model
    with pytest.raises(ConfigError, match="dropout"):
        EASEConfig(dropout=1.0)


def test_ease_uses_fresh_history_and_refuses_huge_catalogues(world):
    ch = EASERecall().fit(world)
    fresh = np.array([1, 2, 3])
    b = ch.recall(np.array([-1]), 5, RecallContext(extra={"history": [fresh]}))
    s = ch.B_[fresh].astype(np.float64).sum(0)  # score(i) = Σ_{j ∈ H} B_ji, H = the fresh history
    s[fresh] = -np.inf
    want = [i for i in np.lexsort((np.arange(len(s)), -s)) if s[i] > 0][:5]
    assert len(want) == 5  # the fresh history alone fills the list
    got = b.items[0][b.items[0] != PAD]
    np.testing.assert_allclose(b.scores[0][: len(got)], s[want], rtol=1e-4)
    assert got.tolist() == want
    with pytest.raises(DataError, match="use itemcf or swing"):
        EASERecall(EASEConfig(max_items=world.n_items - 1)).fit(world)
