"""The cache channel keeps the ranked-but-unshown tail (#16 item 4): `Funnel.run(tail=n)` returns
positions k..k+n-1 of the fused order minus what was shown, and the service stores exactly that
for the user's next request. Checked on a funnel whose ranked order is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.types import RequestState
from funnelrec.pipeline.funnel import _ranked_tail
from funnelrec.pipeline.service import RecommenderService, ServiceConfig

T = 1_700_000_000


def test_ranked_tail_by_hand():
    fused = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.8], np.float32)
    # fused order: positions 0 (.9), 5 (.8), 3 (.7), 2 (.5), 4 (.3), 1 (.1); a re-ranker showed
    # [0, 3] (lifting 3 over 5). k = 2, n = 3: positions 2..4 = [3, 2, 4], minus shown {0, 3}
    assert _ranked_tail(fused, np.array([0, 3]), 2, 3).tolist() == [2, 4]
    assert _ranked_tail(fused, np.array([0, 5]), 2, 3).tolist() == [3, 2, 4]
    assert _ranked_tail(fused, np.array([0, 5]), 2, 10).tolist() == [3, 2, 4, 1]  # shorter than n
    assert _ranked_tail(fused, np.arange(6), 6, 3).tolist() == []


@pytest.fixture(scope="module")
def known_order_funnel():
    """tests/tiny_world.py `known_order_funnel`: the probe's ranked list is items 1..11, k = 3 shows 1, 2, 4."""
    from tiny_world import known_order_funnel as build

    funnel = build()
    assert funnel.ranker_ is None
    return funnel


def _ids(funnel, idx) -> list[int]:
    return funnel.dataset_.items["item_id"].to_numpy()[np.asarray(idx, np.int64)].tolist()


def test_run_returns_the_ranked_tail_minus_shown(known_order_funnel):
    f = known_order_funnel
    u = f.dataset_.user_ids.index(99)
    rec = f.run(np.array([u]), 3, state=RequestState(cached=[None]), tail=4)[0]
    assert _ids(f, rec.items) == [1, 2, 4]
    # positions 3..6 of the ranked list [1..11] are items 4, 5, 6, 7; item 4 was shown
    assert _ids(f, rec.tail_items) == [5, 6, 7]
    np.testing.assert_array_equal(rec.tail_scores, [-4, -5, -6])  # merge order without a ranker: −position
    assert f.run(np.array([u]), 3)[0].tail_items is None  # computed only when asked
    with pytest.raises(DataError, match="tail"):
        f.run(np.array([u]), 3, tail=-1)


# cache_n = 5: positions 3..7 of [1..11] are items 4..8, minus the shown 4; "shown" keeps the k returned
@pytest.mark.parametrize("keep, expect", [("tail", [5, 6, 7, 8]), ("shown", [1, 2, 4])])
def test_service_caches_the_tail_for_the_next_request(known_order_funnel, keep, expect):
    svc = RecommenderService(known_order_funnel, ServiceConfig(cache_n=5, cache_keep=keep))
    try:
        first = svc.recommend(99, k=3, context={"time": T})
        assert first.item_ids == [1, 2, 4]
        keys, scores = svc.results.get("99")
        assert keys.tolist() == expect  # integer item ids are their own keys
        # the next request's cache channel reads exactly this list (minus the user's history)
        state, _ = svc.request_state(svc.current, "99", known_order_funnel.dataset_.user_ids.index(99), T)
        assert _ids(known_order_funnel, state.cached[0][0]) == expect
        second = svc.recommend(99, k=3, context={"time": T}, debug=True)
        cache_recalled = [i for i, ch in zip(second.item_ids, second.rec.channels) if "cache" in ch]
        assert set(cache_recalled) <= set(expect)
    finally:
        svc.close()


def test_cache_keep_is_checked():
    with pytest.raises(ConfigError, match="cache_keep"):
        ServiceConfig(cache_keep="top")


def test_a_ranker_feature_constant_in_training_enters_as_zero():
    """The cache channel recalls nothing while the ranker is fitted, so its recall-source columns
    are constant 0 there (std 0); at serving a cached item has recalled = 1, which the
    standardization (x − mean) / (std + 1e-6) blew up to 1e6 × an untrained weight and the
    item went to the top or the bottom of every list. Such a column now enters as 0."""
    from funnelrec.features.candidates import RankFeatures

    rf = RankFeatures((), ())
    rf.user_rows_ = np.zeros((1, 1), np.int64)
    rf.item_rows_ = np.zeros((2, 1), np.int64)
    rf.set_scale(np.array([[1.0, 0.0], [3.0, 0.0]]))  # column 0: mean 2, std 1; column 1 constant
    dense = rf.batch(np.array([0, 0]), np.array([0, 1]), np.array([[4.0, 1.0], [2.0, 0.0]]))["dense"].numpy()
    np.testing.assert_allclose(dense, [[2.0 / (1 + 1e-6), 0.0], [0.0, 0.0]], rtol=1e-6)
