"""EASE recall against its definition: B column j = ridge regression of item j on the other
items (scikit-learn, no intercept), scores = history · B, top-n unseen with a positive score."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from funnelrec.core.errors import DataError
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
