"""`recall.recent_weight`: the request's real-time history outweighs the fitted history in the
triggers (recall/_common.py UserHistory, pipeline/funnel.py `_context`), checked against dense
references built by hand from the stored matrices."""

import numpy as np
import pytest
import scipy.sparse as sp

import funnelrec.recall  # noqa: F401  (registers every channel)
from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import PAD
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.recall._common import UserHistory
from funnelrec.recall.base import RecallContext


@pytest.mark.parametrize("weighted", [False, True])
def test_history_weight_scales_the_extra_items_only(weighted):
    rng = np.random.default_rng(3)
    A = (rng.random((6, 10)) < 0.4).astype(np.float32)
    W = A * np.arange(1, 11, dtype=np.float32)[None, :] * 0.5 if weighted else A  # 0.5 … 5
    h = UserHistory(sp.csr_matrix(A), sp.csr_matrix(W) if weighted else None)
    users = np.array([1, -1, 4, 4])
    extra = [np.array([0, 9]), np.array([3]), np.array([], np.int64), np.array([7, 7, 2])]
    ctx = RecallContext(extra={"history": extra, "history_weight": 3.0})
    ref_H = np.where((users >= 0)[:, None], W[np.maximum(users, 0)], 0)
    ref_seen = np.where((users >= 0)[:, None], A[np.maximum(users, 0)], 0)
    for r, e in enumerate(extra):
        ref_H[r, e] = np.maximum(ref_H[r, e], 3.0)  # an item in both: the larger weight
        ref_seen[r, e] = 1.0
    H, seen = h.matrix(users, ctx)
    np.testing.assert_array_equal(H.toarray(), ref_H)
    np.testing.assert_array_equal(seen.toarray(), ref_seen)  # seen stays binary
    Hr, seenr = h.rows(users, ctx)
    np.testing.assert_array_equal(Hr.to_csr(10).toarray(), ref_H)
    np.testing.assert_array_equal(seenr.to_csr(10).toarray(), ref_seen)
    # weight 1 (the default) is today's behaviour: max(weight, 1)
    H1, _ = h.rows(users, RecallContext(extra={"history": extra}))
    ref1 = np.where((users >= 0)[:, None], W[np.maximum(users, 0)], 0)
    for r, e in enumerate(extra):
        ref1[r, e] = np.maximum(ref1[r, e], 1.0)
    np.testing.assert_array_equal(H1.to_csr(10).toarray(), ref1)


def test_itemcf_triggers_weigh_recent_clicks(world):
    """Target-mode itemCF: score(s) = Σ_j h(u, j)·sim(s → j), with h = 1 on the fitted history
    and w on the request's fresh clicks; w large enough puts the fresh click's neighbours first."""
    ch = RECALL_CHANNELS.build("itemcf").fit(world)
    u = 2
    fitted = ch.history_.seen[u].indices
    fresh = np.setdiff1d(np.arange(world.n_items), fitted)[:1]
    S = ch.neighbours_.toarray().astype(np.float64)
    got = {}
    for w in (1.0, 50.0):
        b = ch.recall(np.array([u]), 20, RecallContext(extra={"history": [fresh], "history_weight": w}))
        h = np.zeros(world.n_items)
        h[fitted] = 1.0
        h[fresh] = w
        score = S @ h
        score[fitted] = score[fresh] = 0  # seen: excluded
        want = [i for i in np.lexsort((np.arange(len(score)), -score)) if score[i] > 0][:20]
        items = b.items[0][b.items[0] != PAD]
        assert items.tolist() == want
        np.testing.assert_allclose(b.scores[0][: len(items)], score[want], rtol=1e-4)
        got[w] = items
    assert got[1.0].tolist() != got[50.0].tolist()  # the weight changes the answer


def test_recent_weight_config_and_funnel_context():
    with pytest.raises(ConfigError, match="recall.recent_weight must be > 0"):
        FunnelConfig.from_dict({"recall": {"recent_weight": 0}})
    from funnelrec.core.types import RequestState
    from funnelrec.pipeline.funnel import Funnel

    state = RequestState(history=[np.array([3])])
    ctx = Funnel._context(None, state, 1, 4.0)
    assert ctx.extra["history_weight"] == 4.0 and ctx.extra["history"][0].tolist() == [3]
    assert "history_weight" not in Funnel._context(None, state, 1).extra  # default: not set, weight 1
