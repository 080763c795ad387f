"""One orchestration: /recommend (the service), batch and offline evaluation all run `Funnel.run`
with the same filter semantics, and nothing the funnel holds changes during a request."""

import hashlib

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.types import PAD, KeySet, RequestState
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.pipeline.service import RecommenderService, StoreExposure
from funnelrec.recall.base import RecallContext

NOW = 1_700_000_000


def _digest(obj, seen=None, h=None) -> str:
    """sha256 over every array, tensor, sparse matrix and scalar reachable from `obj`."""
    top = h is None
    h = h or hashlib.sha256()
    seen = seen if seen is not None else {}
    if id(obj) in seen:
        return ""
    seen[id(obj)] = obj  # kept alive: a freed temporary's id could be reused by another object
    if isinstance(obj, np.ndarray):
        h.update(str(obj.dtype).encode() + str(obj.shape).encode())
        if obj.dtype != object:
            h.update(np.ascontiguousarray(obj).tobytes())
        else:
            h.update(repr(obj.tolist()).encode())
    elif isinstance(obj, torch.Tensor):
        h.update(obj.detach().numpy().tobytes())
    elif sp.issparse(obj):
        for a in ("data", "indices", "indptr"):
            _digest(getattr(obj, a, np.empty(0)), seen, h)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], seen, h)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj if not isinstance(obj, set | frozenset) else sorted(obj, key=repr):
            _digest(v, seen, h)
    elif isinstance(obj, int | float | str | bool | bytes) or obj is None:
        h.update(repr(obj).encode())
    elif isinstance(obj, torch.nn.Module):
        for k, v in obj.state_dict().items():
            h.update(k.encode())
            _digest(v, seen, h)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("funnelrec"):
        _digest(vars(obj), seen, h)
    return h.hexdigest() if top else ""


@pytest.fixture(scope="module")
def cache_funnel(ml100k, ml100k_split):
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 80}, {"name": "hot", "n": 40}, {"name": "cache", "n": 20}],
                   "merge": {"total": 100, "quotas": {"hot": 30}}},
        "rank": {"epochs": 2}, "prerank": {"enabled": True, "keep": 50, "epochs": 1},
        "rerank": {"method": "cap", "column": "genres", "max_per_category": 4}})
    return FunnelBuilder(cfg).fit(ml100k, ml100k_split.train, labels=ml100k_split.valid)


def test_offline_batch_applies_the_same_exposure_and_exclusion_as_the_service(cache_funnel):
    f = cache_funnel
    svc = RecommenderService(f)
    uids = [str(f.dataset_.user_ids.ids[u]) for u in (3, 40, 200)]
    first = {uid: svc.recommend(uid, k=10, context={"time": NOW}).item_ids for uid in uids}
    for uid in uids:  # the first 4 shown items are impressions; 2 more are excluded by the client
        svc.feedback(None, uid, [{"item_id": i, "type": "impression", "ts": NOW} for i in first[uid][:4]])
    exclude = {uid: first[uid][4:6] for uid in uids}
    users = np.array([f.dataset_.user_ids.index(int(u)) for u in uids])
    # the cache channel's input as /recommend will read it (the first answers), before it is replaced
    cached = [svc.request_state(svc.current, uid, int(u), NOW)[0].cached[0] for uid, u in zip(uids, users)]
    assert all(c is not None and len(c[0]) for c in cached)
    served = {uid: svc.recommend(uid, k=10, context={"time": NOW}, exclude=exclude[uid]) for uid in uids}
    for uid in uids:
        got = served[uid].item_ids
        assert not set(got) & set(first[uid][:6]), "shown or excluded items came back"
    # the offline path: one batch, exclusion as a (U, I) CSR, the exposure as the same store's views
    ex = sp.lil_matrix((f.dataset_.n_users, f.dataset_.n_items), dtype=np.float32)
    item_index = {i: k for k, i in enumerate(f.dataset_.items["item_id"].to_list())}
    for r, uid in enumerate(uids):
        for i in exclude[uid]:
            ex[users[r], item_index[i]] = 1
    state = RequestState(exposure=[StoreExposure(svc.exposure, uid, NOW) for uid in uids], cached=cached)
    items, scores = f.recommend_batch(users, 10, exclude=ex.tocsr(), context=RecallContext(time=NOW), state=state)
    ids = f.dataset_.items["item_id"].to_numpy()
    for r, uid in enumerate(uids):
        assert ids[items[r]].tolist() == served[uid].item_ids
        np.testing.assert_allclose(scores[r], served[uid].rec.scores, rtol=1e-5)
    # and the filter mattered: with the first requests' state (nothing cached, nothing shown) the
    # batch path gives exactly the first answers, shown and excluded items included
    bare, _ = f.recommend_batch(users, 10, context=RecallContext(time=NOW), state=RequestState(cached=[None] * 3))
    assert [ids[bare[r]].tolist() for r in range(len(uids))] == [first[uid] for uid in uids]
    svc.close()


def test_exposure_and_exclude_rows_remove_exactly_those_items(cache_funnel):
    f = cache_funnel
    users = np.array([0, 1])
    base = f.run(users, 10)
    shown = base[0].items[:3]
    drop = base[1].items[[0, 2]]
    recs = f.run(users, 10, state=RequestState(exposure=[KeySet(f.item_keys_[shown]), None],
                                               exclude=[None, drop]), debug=True)
    assert set(recs[0].filtered.tolist()) == set(shown.tolist())
    assert set(recs[1].filtered.tolist()) == set(drop.tolist())
    assert not set(recs[0].items.tolist()) & set(shown.tolist())
    assert not set(recs[1].items.tolist()) & set(drop.tolist())
    # a row with nothing to filter, in a batch whose other row has state, is answered exactly as without state
    assert recs[0].filtered.size == 3
    mixed = f.run(users, 10, state=RequestState(exposure=[KeySet(f.item_keys_[shown]), None], exclude=[None, None]),
                  debug=True)
    assert mixed[1].filtered.size == 0 and mixed[1].items.tolist() == base[1].items.tolist()
    np.testing.assert_allclose(mixed[1].scores, base[1].scores, rtol=1e-6)


def test_nothing_fitted_changes_during_requests(cache_funnel):
    f = cache_funnel
    before = _digest(f)
    ctx = RecallContext(time=NOW, extra={"experiment_params": {"recall.merge.total": 60}})
    for u in (0, 7, -1):
        state = RequestState(history=[np.array([1, 2, 99_999])], exclude=[np.array([5])],
                             exposure=[KeySet(f.item_keys_[:10])], cached=[(np.array([3, 4]), np.array([1.0, 0.5]))])
        f.run(np.array([u]), 10, context=ctx, state=state, debug=True)
    f.recommend_batch(np.arange(30), 10)
    assert _digest(f) == before


def test_fresh_history_changes_the_next_answer_and_is_never_recalled(cache_funnel):
    f = cache_funnel
    u = 5
    base = f.run(np.array([u]), 10)[0]
    clicked = base.items[:3]
    again = f.run(np.array([u]), 10, state=RequestState(history=[clicked]))[0]
    assert not set(again.items.tolist()) & set(clicked.tolist())
    assert again.items.tolist() != base.items.tolist()
    # an unknown user with fresh history is no longer cold start
    assert f.run(np.array([-1]), 10)[0].cold_start
    assert not f.run(np.array([-1]), 10, state=RequestState(history=[clicked]))[0].cold_start
    # and its itemCF candidates are the neighbours of what it clicked: score(i) = Σ_j∈clicked N[j, i]
    # over the fitted neighbour table (N[i, j] in the "target" neighbourhood), the clicked items left out
    ctx = Funnel._context(None, RequestState(history=[clicked]), 1)  # one request row
    itemcf = f.recall(np.array([-1]), ctx)[0]
    assert itemcf.channel == "itemcf"
    items, scores = itemcf.row(0)
    ch = f.channels_["itemcf"]
    N = ch.neighbours_.toarray().astype(np.float64)
    want = (N if ch.neighbourhood == "trigger" else N.T)[clicked].sum(0)
    want[clicked] = 0.0
    n = min(80, int((want > 0).sum()))
    assert n > 10 and len(items) == n and not set(items.tolist()) & set(clicked.tolist())
    np.testing.assert_allclose(scores, want[items], rtol=1e-5)
    assert scores.min() >= np.delete(want, items).max() - 1e-6  # the top n of them


def test_request_state_rows_must_match_the_users(cache_funnel):
    with pytest.raises(DataError, match="exclude"):
        cache_funnel.run(np.array([0, 1]), 10, state=RequestState(exclude=[np.array([1])]))
    with pytest.raises(DataError, match="user indices"):
        cache_funnel.run(np.array([10**6]), 10)


def test_with_components_swaps_one_part_and_leaves_the_original(cache_funnel, ml100k, ml100k_split):
    from funnelrec.data.dataset import TrainData

    f = cache_funnel
    before = _digest(f)
    half = ml100k_split.train.filter(ml100k_split.train["user_idx"] % 2 == 0)
    ch = FunnelBuilder(f.config).fit_channel("itemcf", TrainData(ml100k, half))
    g = f.with_components(channels__itemcf=ch)
    assert g.channels_["itemcf"] is ch and g.channels_["hot"] is f.channels_["hot"] and g.ranker_ is f.ranker_
    a = f.recall(np.array([1]))[0].items  # user 1 is odd: its history is gone from the new table
    b = g.recall(np.array([1]))[0].items
    assert (a != PAD).sum() > 0 and (b != PAD).sum() == 0
    assert _digest(f) == before
    with pytest.raises(ConfigError, match="unknown funnel component"):
        f.with_components(channels__nosuch=ch)


def test_parts_that_do_not_fit_the_served_funnel_are_refused(cache_funnel, ml100k, ml100k_split, tmp_path):
    """A ranker (or pre-ranker) reads 3 recall-source columns per channel in channel order: a
    ranker fitted on another channel list must be refused when the funnel is built, not give
    wrong scores or errors at request time; a partial reload keeps the served config."""
    from funnelrec.pipeline.funnel import Funnel

    f = cache_funnel
    other_cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "hot", "n": 40}, {"name": "itemcf", "n": 80}, {"name": "cache", "n": 20}],
                   "merge": {"total": 100}},
        "rank": {"epochs": 1}, "k": 7})
    other = FunnelBuilder(other_cfg).fit(ml100k, ml100k_split.train, labels=ml100k_split.valid)
    with pytest.raises(ConfigError, match=r"fitted on channels \['hot', 'itemcf', 'cache'\]"):
        f.with_components(ranker=other.ranker_)
    other.save(tmp_path / "other")
    with pytest.raises(ConfigError, match="fitted on channels"):
        Funnel.load(tmp_path / "other", parts=["ranker"], base=f)
    # a channel part fits (same kind, same catalogue): the served config (k, channel order) stays
    g = Funnel.load(tmp_path / "other", parts=["channels/hot"], base=f)
    assert g.config is f.config and g.config.k != 7 and g.ranker_ is f.ranker_
    assert [c.name for c in g.config.recall.channels] == ["itemcf", "hot", "cache"]
    with pytest.raises(ConfigError, match="configured as 'hot'"):
        f.with_components(channels__hot=f.channels_["itemcf"])
