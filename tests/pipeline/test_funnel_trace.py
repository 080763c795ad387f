"""`Recommendation.trace` (what the console's User page draws, #13 item 4) and the service's
reload history: each stage's list checked against the stage computed on its own."""

from __future__ import annotations

import numpy as np
import pytest

from funnelrec.core.types import PAD, KeySet, RequestState
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.service import RecommenderService
from tiny_world import make_world


@pytest.fixture(scope="module")
def funnel():
    world = make_world(seed=5)
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 20}, {"name": "hot", "n": 12}],
                   "merge": {"total": 25, "quotas": {"hot": 6}}},
        "rank": {"model": "lr", "epochs": 1},
        "prerank": {"enabled": True, "keep": 9},
        "k": 5,
    })
    from funnelrec.data.splits import random_split_by_user

    split = random_split_by_user(world.interactions, seed=0)
    f = FunnelBuilder(cfg).fit(world.dataset, split.train, labels=split.valid)
    assert f.prerank_ is not None and f.ranker_ is not None
    return f


def test_trace_holds_each_stage(funnel):
    user = 3
    plain = funnel.recommend(user_idx=user, k=5)
    assert plain.trace is None  # only debug requests keep it
    base = funnel.recommend(user_idx=user, k=5, debug=True)
    merged = base.trace.merged.items
    shown = merged[[1, 4, 6]]  # three merged candidates the user "was shown"
    state = RequestState(exposure=[KeySet(funnel.item_keys_[shown])])
    rec = funnel.recommend(user_idx=user, k=5, state=state, debug=True)
    tr = rec.trace
    # recall: each channel's own answer
    for name, items, scores in tr.recall:
        own = funnel.channels_[name].recall(np.array([user]), dict(itemcf=20, hot=12)[name])
        assert items.tolist() == own.items[0].tolist() and np.allclose(scores, own.scores[0], equal_nan=True)
    # merge: at most total, hot within its quota, every item from some channel
    recalled = {int(i) for _, items, _ in tr.recall for i in items if i != PAD}
    assert len(tr.merged) <= 25 and set(tr.merged.items.tolist()) <= recalled
    hot = {int(i) for n, items, _ in tr.recall if n == "hot" for i in items if i != PAD}
    others = {int(i) for n, items, _ in tr.recall if n != "hot" for i in items if i != PAD}
    assert len(set(tr.merged.items.tolist()) & (hot - others)) <= 6
    # filter: exactly the shown items removed, merge order kept
    assert tr.merged.items.tolist() == merged.tolist()
    assert tr.after_filter.items.tolist() == [i for i in merged.tolist() if i not in set(shown.tolist())]
    assert sorted(rec.filtered.tolist()) == sorted(shown.tolist())
    # pre-rank: the top `keep` of the filtered set by the pre-ranker's own scores, merge order kept
    assert len(tr.after_filter) > 9  # so the cut is real
    s = funnel.prerank_.score(np.array([user]), [tr.after_filter], funnel.stats_.item_log_pop,
                              funnel.stats_.user_log_act)[0]
    keep = np.sort(np.argsort(-s, kind="stable")[:9])
    assert tr.ranked.items.tolist() == tr.after_filter.items[keep].tolist()
    np.testing.assert_allclose(tr.prerank_scores, s[keep], rtol=1e-6)
    # rank + final: fused = Σ w·task over the ranked set; the answer is ranked[top]
    w = rec.fusion_weights
    np.testing.assert_allclose(tr.fused, sum(w[t] * v for t, v in tr.task_scores.items()), rtol=1e-5, atol=1e-6)
    assert rec.items.tolist() == tr.ranked.items[tr.top].tolist()
    np.testing.assert_allclose(rec.scores, tr.fused[tr.top])
    assert tr.merge.total == 25 and tr.merge.quotas == {"hot": 6}


def test_reload_history(funnel, tmp_path):
    svc = RecommenderService(funnel, version="v0")
    funnel.save(tmp_path / "a")
    funnel.save(tmp_path / "b")
    va = svc.reload(tmp_path / "a")
    vb = svc.reload(tmp_path / "b", parts=["ranker"])
    log = list(svc.reload_log)
    assert [r["version"] for r in log] == ["v0", va, vb]
    assert [r["parts"] for r in log] == [None, None, ["ranker"]]
    assert log[0]["source"] == "start" and log[2]["source"] == str(tmp_path / "b")
    assert log[0]["at"] <= log[1]["at"] <= log[2]["at"]
    svc.close()
