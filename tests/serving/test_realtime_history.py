"""Real-time history over real HTTP (uvicorn): a click changes the very next /recommend.

The itemCF channel's candidates in an answer are checked against the channel's score recomputed
by hand with numpy from its neighbour table, over the user's training items (read from the
split, not from the channel) ∪ the clicked items:

    target neighbourhood: score(s) = Σ_{i ∈ H} N[s, i] = (h · Nᵀ)_s,  seen items dropped, top n by (−score, id)

Two services on one Redis see each other's clicks; the SQLite backend keeps them across a restart.
"""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from funnelrec.core.ids import item_key
from funnelrec.data.splits import random_split_by_user
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.service import RecommenderService, ServiceConfig
from funnelrec.serving.app import create_app
from tiny_world import make_world

N_CF, N_HOT = 15, 10
T = 1_000_000_000 + 200 * 86400  # after every event of the tiny world


@pytest.fixture(scope="module")
def world_funnel():
    """itemCF + hot, no ranker: an answer of k = merge total is the whole merged list, so every
    itemCF candidate is in it with its recall score."""
    world = make_world()
    split = random_split_by_user(world.dataset.interactions, seed=1)
    cfg = FunnelConfig.from_dict({"recall": {"channels": [{"name": "itemcf", "n": N_CF}, {"name": "hot", "n": N_HOT}],
                                             "merge": {"total": N_CF + N_HOT}}})
    return FunnelBuilder(cfg).fit(world.dataset, split.train), split.train


def _train_items(train, user_idx: int) -> set[int]:
    return set(train.filter(train["user_idx"] == user_idx)["item_idx"].to_list())


def hand_itemcf(funnel, history: set[int]) -> dict:
    """{external item id: score} of the itemCF channel for a user whose history is `history`
    (dense indices), by numpy from the channel's neighbour table."""
    ch = funnel.channels_["itemcf"]
    N = ch.neighbours_.toarray().astype(np.float64)  # row i = i's neighbours (i → s)
    h = np.zeros(N.shape[0])
    h[sorted(history)] = 1.0
    s = h @ N if ch.neighbourhood == "trigger" else N @ h  # target: Σ_{i ∈ H} sim(s → i)
    s[h > 0] = -np.inf
    cand = np.flatnonzero(s > 0)
    top = cand[np.lexsort((cand, -s[cand]))][:N_CF]
    ids = funnel.dataset_.items["item_id"].to_numpy()
    return {int(ids[i]): float(s[i]) for i in top}


def _itemcf_of(answer: dict) -> dict:
    return {it["item_id"]: it["recall_scores"]["itemcf"] for it in answer["items"] if "itemcf" in it["recall_scores"]}


def _assert_itemcf(answer: dict, want: dict) -> None:
    got = _itemcf_of(answer)
    assert set(got) == set(want)
    np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-5)


def _recommend(base: str, user: str) -> dict:
    r = httpx.post(f"{base}/recommend", json={"user_id": user, "k": N_CF + N_HOT, "context": {"time": T}})
    assert r.status_code == 200, r.text
    return r.json()


def _click(base: str, user: str, item: int, kind: str = "click", value: float = 1.0) -> None:
    r = httpx.post(f"{base}/feedback", json={"user_id": user, "events": [
        {"item_id": item, "type": kind, "value": value, "ts": T}]})
    assert r.status_code == 200, r.text


def _unseen_item_with_neighbours(funnel, seen: set[int]) -> int:
    """A dense item outside `seen` whose click brings new itemCF candidates."""
    N = funnel.channels_["itemcf"].neighbours_
    lens = np.diff(N.indptr)
    return next(i for i in np.argsort(-lens, kind="stable").tolist() if i not in seen)


def test_a_click_changes_the_next_answer_over_http(world_funnel, serve):
    f, train = world_funnel
    user = "5"
    u = f.dataset_.user_ids.index(user)
    seen = _train_items(train, u)
    x = _unseen_item_with_neighbours(f, seen)
    x_id = int(f.dataset_.items["item_id"][x])
    svc = RecommenderService(f, ServiceConfig())
    with serve(create_app(svc)) as base:
        before = _recommend(base, user)
        _assert_itemcf(before, hand_itemcf(f, seen))
        _click(base, user, x_id)
        after = _recommend(base, user)
    ids = [it["item_id"] for it in after["items"]]
    assert x_id not in ids  # consumed: never recommended again
    want = hand_itemcf(f, seen | {x})
    _assert_itemcf(after, want)
    assert want != hand_itemcf(f, seen) and _itemcf_of(after) != _itemcf_of(before)  # the click moved the triggers
    assert svc.history.recent(user).keys.tolist() == [item_key(x_id)]
    svc.close()


def test_an_unknown_user_with_a_few_clicks_is_served_personalised(world_funnel, serve):
    f, _ = world_funnel
    ch = f.channels_["itemcf"].neighbours_
    clicked = [int(i) for i in np.argsort(-np.diff(ch.indptr), kind="stable")[:2]]
    ids = f.dataset_.items["item_id"].to_numpy()
    svc = RecommenderService(f, ServiceConfig())
    with serve(create_app(svc)) as base:
        cold = _recommend(base, "never-seen-user")
        assert cold["cold_start"] is True and not _itemcf_of(cold)
        for i in clicked:
            _click(base, "never-seen-user", int(ids[i]))
        warm = _recommend(base, "never-seen-user")
    assert warm["cold_start"] is False and warm["note"] is None
    _assert_itemcf(warm, hand_itemcf(f, set(clicked)))  # the clicks alone are the triggers
    assert not {int(ids[i]) for i in clicked} & {it["item_id"] for it in warm["items"]}
    svc.close()


def test_impressions_and_zero_watch_time_do_not_change_the_answer(world_funnel, serve):
    f, train = world_funnel
    user = "9"
    u = f.dataset_.user_ids.index(user)
    seen = _train_items(train, u)
    x = _unseen_item_with_neighbours(f, seen)
    x_id = int(f.dataset_.items["item_id"][x])
    svc = RecommenderService(f, ServiceConfig())
    with serve(create_app(svc)) as base:
        _click(base, user, x_id, "watch_time", 0.0)
        _click(base, user, x_id, "impression")
        got = _recommend(base, user)
        assert len(svc.history.recent(user)) == 0
        # the triggers are the training items alone (x itself is now filtered as shown)
        _assert_itemcf(got, {i: v for i, v in hand_itemcf(f, seen).items() if i != x_id})
        _click(base, user, x_id, "watch_time", 12.5)  # watched: a consumption
        _assert_itemcf(_recommend(base, user), hand_itemcf(f, seen | {x}))
    assert svc.history.recent(user).type_names() == ["watch_time"]
    svc.close()


@pytest.mark.redis
def test_two_services_on_one_redis_share_the_history(world_funnel, serve, redis_url, tmp_path):
    f, train = world_funnel
    user = "11"
    seen = _train_items(train, f.dataset_.user_ids.index(user))
    x = _unseen_item_with_neighbours(f, seen)
    x_id = int(f.dataset_.items["item_id"][x])
    prefix = f"test:{uuid.uuid4().hex}:"
    a = RecommenderService(f, ServiceConfig(state_dir=str(tmp_path / "a"), redis_url=redis_url, redis_prefix=prefix))
    b = RecommenderService(f, ServiceConfig(state_dir=str(tmp_path / "b"), redis_url=redis_url, redis_prefix=prefix))
    with serve(create_app(a)) as base_a, serve(create_app(b)) as base_b:
        before = _recommend(base_b, user)
        _click(base_a, user, x_id)  # through A …
        after = _recommend(base_b, user)  # … B's next answer has it
    assert x_id not in [it["item_id"] for it in after["items"]]
    _assert_itemcf(after, hand_itemcf(f, seen | {x}))
    assert _itemcf_of(after) != _itemcf_of(before)
    import redis

    client = redis.Redis.from_url(redis_url)
    assert client.llen(f"{prefix}history:{user}") == 1  # one list per user, one record
    client.delete(*client.scan_iter(match=prefix + "*"))
    client.close()
    a.close()
    b.close()


def test_the_sqlite_history_survives_a_restart(world_funnel, tmp_path):
    f, train = world_funnel
    user = "13"
    seen = _train_items(train, f.dataset_.user_ids.index(user))
    x = _unseen_item_with_neighbours(f, seen)
    x_id = int(f.dataset_.items["item_id"][x])
    cfg = ServiceConfig(state_dir=str(tmp_path / "state"), history_n=3)
    svc = RecommenderService(f, cfg)
    svc.feedback(None, user, [{"item_id": x_id, "type": "purchase", "ts": T}])
    svc.close()
    assert (tmp_path / "state" / "history.db").exists()
    again = RecommenderService(f, cfg)
    out = again.recommend(user, k=N_CF + N_HOT, context={"time": T})
    assert x_id not in out.item_ids
    got = {iid: float(out.rec.recall_scores[p][0]) for p, iid in enumerate(out.item_ids)
           if "itemcf" in out.rec.channels[p]}
    want = hand_itemcf(f, seen | {x})
    assert set(got) == set(want)
    np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-5)
    again.close()
