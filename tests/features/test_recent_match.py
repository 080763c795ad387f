"""The short-term block of the history-match features (features/candidates.py `recent_rows`,
`HistoryMatch` with recent_decay): hand-computed cases, a dense reference on random data, and
the request path (fit-time order + real-time history) equal to a fit on the longer history."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from funnelrec.core.errors import ConfigError
from funnelrec.features.candidates import HistoryMatch, recent_rows

ITEMS = pl.DataFrame({"tags": [["x"], ["x", "y"], ["y"], ["z"]]})


def _binary(u, i, shape):
    H = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=shape)
    H.data[:] = 1.0
    return H


def test_recent_rows_weights_the_latest_distinct_items_by_hand():
    # user 0: a@1 b@2 c@3 a@4 → distinct newest first a, c, b; user 1: d@5 and b@5 (the later row first)
    u, i, t = np.array([0, 0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 3, 1]), np.array([1, 2, 3, 4, 5, 5])
    R = recent_rows(u, i, t, _binary(u, i, (2, 4)), 0.5, 10).toarray()
    np.testing.assert_allclose(R, [[1.0, 0.25, 0.5, 0.0], [0.0, 1.0, 0.0, 0.5]])
    # n = 2 keeps the two newest; an event whose pair is not in the history is left out
    H = _binary(np.array([0, 0, 0]), np.array([0, 1, 2]), (2, 4))
    np.testing.assert_allclose(recent_rows(u, i, t, H, 0.5, 2).toarray(), [[1.0, 0.0, 0.5, 0.0], [0, 0, 0, 0]])


def test_recent_share_by_hand():
    u, i, t = np.array([0, 0, 0, 0]), np.array([0, 1, 2, 0]), np.array([1, 2, 3, 4])
    hm = HistoryMatch(("tags",), recent_decay=0.5, recent_n=10).fit(_binary(u, i, (1, 4)), ITEMS, (u, i, t))
    assert hm.names_ == ["match_log_tags", "match_share_tags", "recent_share_tags"]
    X = hm.transform(np.zeros(4, np.int64), np.arange(4))
    # weights a 1, c .5, b .25 (Σ 1.75); tags a {x}, b {x, y}, c {y}
    # a: a + b = 1.25 / 1.75; b: (a 1 + c .5 + b .25·2) / (2 · 1.75); c: (c .5 + b .25) / 1.75; d: 0
    np.testing.assert_allclose(X[:, 2], [1.25 / 1.75, 2.0 / 3.5, 0.75 / 1.75, 0.0], rtol=1e-6)
    # the long-term share is the unweighted one: a, b, c each once in a 3-item history
    np.testing.assert_allclose(X[:, 1], [2 / 3, 4 / 6, 2 / 3, 0.0], rtol=1e-6)


def test_recent_share_equals_dense_reference_on_random_data():
    rng = np.random.default_rng(5)
    U, I, V, n, g = 25, 40, 9, 6, 0.6
    vals = [[f"v{x}" for x in rng.choice(V, rng.integers(0, 4), replace=False)] for _ in range(I)]
    items = pl.DataFrame({"tags": vals})
    E = 300
    u, i, t = rng.integers(0, U, E), rng.integers(0, I, E), rng.integers(0, 50, E)
    hm = HistoryMatch(("tags",), recent_decay=g, recent_n=n).fit(_binary(u, i, (U, I)), items, (u, i, t))
    A = hm.attrs_["tags"].toarray()
    W = np.zeros((U, I))
    for uu in range(U):  # the definition, event by event
        ev = sorted([(t[e], e, i[e]) for e in range(E) if u[e] == uu], reverse=True)
        seen: list[int] = []
        for _, _, it in ev:
            if it not in seen:
                seen.append(it)
        for k, it in enumerate(seen[:n]):
            W[uu, it] = g ** k
    qu, qi = rng.integers(0, U, 500), rng.integers(0, I, 500)
    X = hm.transform(qu, qi)
    cnt = np.einsum("mv,mv->m", W[qu] @ A, A[qi])
    want = cnt / np.maximum(A[qi].sum(1), 1) / np.maximum(W[qu].sum(1), 1.0)
    np.testing.assert_allclose(X[:, -1], want, rtol=1e-5, atol=1e-7)
    assert (want > 0).mean() > 0.2 and (want == 0).any()


def test_a_request_with_fresh_history_sees_what_a_fit_on_the_longer_history_sees():
    """Serving (fit-time order, then the request's real-time history, oldest first) gives the
    same short-term rows and features as fitting on the events with the fresh ones appended
    later in time — the definition is one, training and request side."""
    rng = np.random.default_rng(7)
    U, I, g, n = 6, 30, 0.5, 8
    items = pl.DataFrame({"tags": [[f"v{x % 7}", f"w{x % 3}"] for x in range(I)]})
    u, i, t = rng.integers(0, U, 60), rng.integers(0, I, 60), rng.integers(0, 100, 60)
    fit = HistoryMatch(("tags",), recent_decay=g, recent_n=n).fit(_binary(u, i, (U, I)), items, (u, i, t))
    fresh = [rng.integers(0, I, rng.integers(0, 6)) for _ in range(U)]
    fresh[2] = np.array([i[u == 2][0], i[u == 2][0]])  # an item of its fit history, twice
    users = np.arange(U)
    H, R = fit.current(users, fresh)
    fu = np.repeat(users, [len(f) for f in fresh])
    fi = np.concatenate(fresh)
    ft = 1000 + np.concatenate([np.arange(len(f)) for f in fresh])  # oldest first, after the fit
    uu, ii, tt = np.r_[u, fu], np.r_[i, fi], np.r_[t, ft]
    ref = HistoryMatch(("tags",), recent_decay=g, recent_n=n).fit(_binary(uu, ii, (U, I)), items, (uu, ii, tt))
    np.testing.assert_allclose(R.toarray(), ref.recent_.toarray(), rtol=1e-6)
    qu, qi = np.repeat(users, I), np.tile(np.arange(I), U)
    np.testing.assert_allclose(fit.transform(qu, qi, H, R), ref.transform(qu, qi), rtol=1e-5, atol=1e-7)


def test_extend_items_and_users_keep_the_short_term_rows():
    u, i, t = np.array([0, 0]), np.array([0, 2]), np.array([1, 2])
    hm = HistoryMatch(("tags",), recent_decay=0.5).fit(_binary(u, i, (1, 4)), ITEMS, (u, i, t))
    grown = hm.extend_items(pl.concat([ITEMS, pl.DataFrame({"tags": [["y"]]})])).extend_users(3)
    assert grown.recent_.shape == (3, 5) and hm.recent_.shape == (1, 4)
    X = grown.transform(np.array([0, 2]), np.array([4, 4]))
    np.testing.assert_allclose(X[:, -1], [1.0 / 1.5, 0.0])  # new item "y" matches c (weight 1) of Σ 1.5


def test_bad_short_term_settings_fail_clearly():
    from funnelrec.train.candidate_ranker import CandidateRankerConfig

    with pytest.raises(ConfigError, match="recent_decay"):
        CandidateRankerConfig(match_columns=("tags",), recent_decay=1.0)
    with pytest.raises(ConfigError, match="recent_n"):
        CandidateRankerConfig(match_columns=("tags",), recent_decay=0.5, recent_n=0)
    with pytest.raises(ConfigError, match="match_columns"):
        CandidateRankerConfig(recent_decay=0.5)
    with pytest.raises(ConfigError, match="fit-time events"):
        HistoryMatch(("tags",), recent_decay=0.5).fit(_binary([0], [0], (1, 4)), ITEMS)
