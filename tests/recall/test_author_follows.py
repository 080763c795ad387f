"""The follow graph (#16 item 1): the follows table in the data contract and its loaders, the
author channel's followed-first recall and its co-following similarity (hand-computed), live
follow / unfollow through the service, and the synthetic world's optional follows."""

import math

import numpy as np
import polars as pl
import pytest

from funnelrec.core.errors import DataError
from funnelrec.core.types import PAD, RequestState
from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.schema import Schema
from funnelrec.online.follows import MemoryFollowStore, SQLiteFollowStore
from funnelrec.recall.author import AuthorConfig, AuthorRecall
from funnelrec.recall.base import RecallContext

SCHEMA = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time"},
                items={"item_id": "categorical", "author": "categorical", "publish_time": "time"})


def world(follows=None):
    """6 users, 9 items by authors A (items 0–2), B (3–5), C (6–8); item i published at 100·i."""
    items = pl.DataFrame({"item_id": np.arange(9), "author": ["A"] * 3 + ["B"] * 3 + ["C"] * 3,
                          "publish_time": 100 * np.arange(9)})
    # consumption: users 0, 1 read A and B; user 2 reads C; users 3–5 read a little of each
    pairs = [(0, 0), (0, 3), (1, 1), (1, 4), (2, 6), (2, 7), (3, 2), (4, 5), (5, 8), (5, 0)]
    inter = pl.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                          "timestamp": np.arange(len(pairs)) + 10_000})
    users = pl.DataFrame({"user_id": np.arange(6)})
    ds = Dataset.build("toy", inter, SCHEMA, users=users, items=items, follows=follows)
    return TrainData(ds, ds.interactions)


FOLLOWS = pl.DataFrame({"user_id": [1, 2, 3, 2, 3, 4], "author_id": ["A", "A", "A", "B", "B", "C"],
                        "ts": [1, 2, 3, 4, 5, 6]})


def channel(data, **kw):
    return AuthorRecall(AuthorConfig(column="author", **kw)).fit(data)


def row(batch, r=0):
    items, scores = batch.row(r)
    return items.tolist(), scores.tolist()


def test_similarity_is_the_cosine_of_audiences_followers_and_readers():
    ch = channel(world(FOLLOWS), k_similar=2)
    A, B, C = (ch.forward_.code(a) for a in "ABC")
    sim = ch.similar_.toarray()
    # readers A = {0, 1, 3, 5}, B = {0, 1, 4}, C = {2, 5}; followers A = {1, 2, 3}, B = {2, 3}, C = {4}
    # audiences P_A = {0, 1, 2, 3, 5}, P_B = {0, 1, 2, 3, 4}, P_C = {2, 4, 5}
    assert sim[A, B] == pytest.approx(4 / math.sqrt(5 * 5), rel=1e-6)
    assert sim[B, A] == pytest.approx(4 / 5, rel=1e-6)
    assert sim[A, C] == pytest.approx(2 / math.sqrt(5 * 3), rel=1e-6)
    assert sim[B, C] == pytest.approx(2 / math.sqrt(5 * 3), rel=1e-6)
    assert np.all(np.diag(sim) == 0)


def test_without_follows_similarity_is_co_consumption():
    ch = channel(world(), k_similar=2)
    A, B, C = (ch.forward_.code(a) for a in "ABC")
    sim = ch.similar_.toarray()
    # readers: A = {0, 1, 3, 5}, B = {0, 1, 4}, C = {2, 5}: cos(A, B) = 2/sqrt(12), cos(A, C) = 1/sqrt(8)
    assert sim[A, B] == pytest.approx(2 / math.sqrt(12), rel=1e-6)
    assert sim[A, C] == pytest.approx(1 / math.sqrt(8), rel=1e-6)
    assert sim[B, C] == 0.0


def test_followed_authors_fresh_items_come_first_then_consumption():
    ch = channel(world(FOLLOWS), k_similar=0)
    # user 4 follows C (items 6, 7, 8; fresh = newest first) and read item 5 (author B: 3, 4 left,
    # by popularity — one reader each, the tie to the lower index)
    items, scores = row(ch.recall(np.array([4]), 10))
    assert items == [8, 7, 6, 3, 4]
    assert scores[0] > scores[1] > scores[2] > scores[3]
    # followed scores: max consumption score + 1 + (t_i − (now − D)) / D, D = 1 day, now = the last
    # training time 10 009, t_i = 100·i; C's items also enter the consumption weights (γ = 1):
    # w = a(B) + f(C) = 1 + 1, c = w · pop / max pop = 1/2 for items 3, 4 (one reader; max pop 2)
    assert scores[3] == pytest.approx(0.5) and scores[4] == pytest.approx(0.5)
    assert scores[0] - scores[1] == pytest.approx(100 / 86400, rel=1e-3)
    assert scores[2] == pytest.approx(0.5 + 1 + (600 - (10_009 - 86400)) / 86400, rel=1e-6)
    # a shorter window keeps only the items published in it: D = 10 009 − 650 s leaves 7 and 8
    short = channel(world(FOLLOWS), k_similar=0, fresh_days=(10_009 - 650) / 86400)
    assert row(short.recall(np.array([4]), 10))[0][:2] == [8, 7]
    # an item published after the request time is not fresh yet
    at = row(ch.recall(np.array([4]), 10, RecallContext(time=750)))[0]
    assert at[:2] == [7, 6] and 8 in at[2:]  # 8 still comes by the consumption weights


def test_users_without_follows_fall_back_to_consumption_exactly():
    with_f, without = channel(world(FOLLOWS), k_similar=0), channel(world(), k_similar=0)
    users = np.array([0, 5, -1])  # nobody among them follows anyone
    a, b = with_f.recall(users, 6), without.recall(users, 6)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores)
    # use_follows=False ignores the table for a follower too
    off = channel(world(FOLLOWS), k_similar=0, use_follows=False)
    np.testing.assert_array_equal(off.recall(np.array([4]), 6).items, without.recall(np.array([4]), 6).items)


def test_follows_after_the_training_time_are_not_used():
    late = FOLLOWS.with_columns(pl.when(pl.col("user_id") == 4).then(99_999).otherwise(pl.col("ts")).alias("ts"))
    ch = channel(world(late), k_similar=0)
    assert row(ch.recall(np.array([4]), 10))[0] == [3, 4]  # the follow of C is in the future: consumption only


def test_live_follows_add_and_remove_edges():
    ch = channel(world(FOLLOWS), k_similar=0)
    state = RequestState(follows=[{"B": True, "C": False}, None, {"nobody": True}])
    items = ch.recall(np.array([4, 0, 5]), 10, RecallContext(state=state)).items
    # user 4: C unfollowed, B followed (its unseen items 4, 3 first, newest first), nothing else left
    assert [i for i in items[0] if i != PAD] == [4, 3]
    # user 0: no live follows → the fitted state (none) → consumption only, as without follows
    np.testing.assert_array_equal(items[1], ch.recall(np.array([0]), 10).items[0])
    # an author the catalogue does not know is ignored
    np.testing.assert_array_equal(items[2], ch.recall(np.array([5]), 10).items[0])
    # an unknown user (−1) with a live follow gets that author's items
    cold = ch.recall(np.array([-1]), 10, RecallContext(state=RequestState(follows=[{"A": True}])))
    assert row(cold)[0] == [2, 1, 0]


def test_follows_table_is_checked_naming_the_problem():
    with pytest.raises(DataError, match="follows: missing column 'ts'"):
        world(FOLLOWS.drop("ts"))
    with pytest.raises(DataError, match="name users not in the data, e.g. user_id 77"):
        world(pl.DataFrame({"user_id": [77], "author_id": ["A"], "ts": [1]}))
    with pytest.raises(DataError, match="column 'author_id' has 1 nulls"):
        world(pl.DataFrame({"user_id": [1], "author_id": [None], "ts": [1]}, schema_overrides={"author_id": pl.String}))
    # one row per edge, the latest ts kept
    ds = world(pl.DataFrame({"user_id": [1, 1], "author_id": ["A", "A"], "ts": [5, 3]})).dataset
    assert ds.follows.select("user_id", "author_id", "ts").rows() == [(1, "A", 5)]


def test_tabular_loader_reads_a_follows_file(tmp_path):
    from funnelrec.data.tabular import load_tabular

    (tmp_path / "inter.csv").write_text("user_id,item_id,timestamp\n1,10,100\n2,11,200\n")
    (tmp_path / "items.csv").write_text("item_id,author\n10,x\n11,y\n")
    (tmp_path / "schema.yaml").write_text("interactions: {user_id: categorical, item_id: categorical, timestamp: time}\n"
                                          "items: {item_id: categorical, author: categorical}\n")
    (tmp_path / "follows.csv").write_text("user_id,author_id,ts\n1,y,2026-01-01\n2,x,150\n")
    ds = load_tabular(tmp_path / "inter.csv", tmp_path / "schema.yaml", items=tmp_path / "items.csv",
                      follows=tmp_path / "follows.csv")
    assert ds.follows.sort("user_id").select("user_id", "author_id", "ts").rows() == [
        (1, "y", 1_767_225_600), (2, "x", 150)]
    (tmp_path / "bad.csv").write_text("user_id,author_id,ts\n9,x,1\n")
    with pytest.raises(DataError, match="user_id 9"):
        load_tabular(tmp_path / "inter.csv", tmp_path / "schema.yaml", items=tmp_path / "items.csv",
                     follows=tmp_path / "bad.csv")


def test_synthetic_follows_are_off_by_default_and_leave_the_world_unchanged():
    from funnelrec.data import load_dataset

    kw = dict(n_users=300, n_items=200, n_interactions=4000, seed=3)
    plain, followed = load_dataset("synthetic", **kw), load_dataset("synthetic", follows_per_user=4, **kw)
    assert plain.follows is None
    for t in ("interactions", "users", "items"):
        assert getattr(plain, t).equals(getattr(followed, t))
    f = followed.follows
    assert f.select("user_id", "author_id").is_duplicated().sum() == 0
    # Poisson(4) per user: the mean is near 4 (300 users: sd of the mean ≈ 0.12)
    assert abs(f.height / 300 - 4) < 0.5
    # users follow authors they like: their affinity to followed authors beats a random author's
    w = followed.extras["world"]
    authors = f["author_id"].str.slice(1).cast(pl.Int64).to_numpy()
    mean = np.stack([w.item_vectors[w.item_author == a].mean(0) for a in range(w.item_author.max() + 1)
                     if (w.item_author == a).any()])
    valid = np.array([a for a in range(w.item_author.max() + 1) if (w.item_author == a).any()])
    pos = {a: k for k, a in enumerate(valid)}
    s_follow = np.einsum("nd,nd->n", w.user_vectors[f["user_id"].to_numpy()], mean[[pos[a] for a in authors]])
    s_random = (w.user_vectors[f["user_id"].to_numpy()] @ mean.T).mean(1)
    assert s_follow.mean() > s_random.mean() + 0.2
    again = load_dataset("synthetic", follows_per_user=4, **kw).follows  # seeded
    assert again.equals(f)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_follow_store_keeps_the_latest_edge(kind, tmp_path):
    store = MemoryFollowStore() if kind == "memory" else SQLiteFollowStore(tmp_path / "follows.db")
    store.update("u", [("a", True, 10), ("b", True, 10)])
    store.update("u", [("a", False, 12), ("b", False, 9)])  # b's unfollow is older than its follow
    assert store.get("u") == {"a": False, "b": True}
    assert store.get("nobody") == {}
    store.close()


def test_redis_follow_store_keeps_the_latest_edge(redis_url):
    from funnelrec.online.follows import RedisFollowStore

    store = RedisFollowStore(redis_url, prefix="test-follows:")
    store.update("u", [("a", True, 10), ("b", True, 10)])
    store.update("u", [("a", False, 12), ("b", False, 9)])
    assert store.get("u") == {"a": False, "b": True}
    store.close()


def test_service_feedback_follow_reaches_the_next_request():
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig
    from funnelrec.pipeline.service import RecommenderService
    from tiny_world import make_world

    data = make_world()
    cfg = FunnelConfig.from_dict({"recall": {"channels": [{"name": "hot", "n": 10},
                                                          {"name": "author", "n": 30,
                                                           "params": {"column": "authors", "k_similar": 0,
                                                                      "fresh_days": 1000}}]}, "rank": {"epochs": 1}})
    f = FunnelBuilder(cfg).fit(data.dataset, data.interactions)
    svc = RecommenderService(f)
    uid, u = "3", f.dataset_.user_ids.index(3)
    cur = svc.current
    assert svc.request_state(cur, uid, u, 0)[0].follows is None
    svc.feedback(None, uid, [{"item_id": "p5", "type": "follow", "ts": 100}])
    state = svc.request_state(cur, uid, u, 0)[0]
    assert state.follows == [{"p5": True}]
    author = f.channels_["author"]
    got = author.recall(np.array([u]), 30, RecallContext(state=state)).items[0]
    # p5's items already published at the last training time, unseen by the user, come first, newest first
    items = data.dataset.items
    now = int(data.interactions["timestamp"].max())
    t = items["publish_time"].to_numpy()
    seen = set(data.interactions.filter(pl.col("user_idx") == u)["item_idx"].to_list())
    want = sorted((i for i, a in enumerate(items["authors"].to_list()) if "p5" in a and t[i] <= now and i not in seen),
                  key=lambda i: -t[i])
    assert len(want) > 0 and got.tolist()[: len(want)] == want
    svc.feedback(None, uid, [{"item_id": "p5", "type": "unfollow", "ts": 101}])
    assert svc.request_state(cur, uid, u, 0)[0].follows == [{"p5": False}]
    svc.close()
