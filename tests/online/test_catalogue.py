"""The live catalogue (issue #10 item 3) below HTTP: the store's semantics on every backend (real
SQLite, real Redis), `Funnel.with_items` (old ids keep their indices, save/load round trip, the
new item's vector and ranker rows by hand), and two services on one Redis seeing one catalogue."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from funnelrec.core.errors import DataError
from funnelrec.core.ids import item_key
from funnelrec.online.catalogue import MemoryCatalogue, RedisCatalogue, SQLiteCatalogue
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.pipeline.service import RecommenderService, ServiceConfig
from funnelrec.recall.base import RecallContext
from tiny_world import make_world

DAY = 86400
T = 1_000_000_000 + 200 * DAY  # after every timestamp of the tiny world


@pytest.fixture(params=["memory", "sqlite", "redis"])
def catalogue(request, tmp_path):
    if request.param == "memory":
        cat = MemoryCatalogue()
    elif request.param == "sqlite":
        cat = SQLiteCatalogue(tmp_path / "catalogue.db")
    else:
        url = request.getfixturevalue("redis_url")
        cat = RedisCatalogue(url, prefix=f"test-cat-{tmp_path.name}:")
    yield cat
    cat.close()


def test_store_semantics(catalogue):
    assert catalogue.version() == 0
    v1 = catalogue.upsert_items([{"item_id": 7, "attributes": {"genres": ["drama"], "directors": ["p1"]},
                                  "expires_at": 500}], now=100)
    v2 = catalogue.upsert_items([{"item_id": "7", "attributes": {"genres": ["comedy"]}}], now=200)  # 7 and "7": one item
    v3 = catalogue.hide_item("x9", now=200)
    v4 = catalogue.upsert_items([{"item_id": "s", "attributes": {}}], now=300)
    v5 = catalogue.delete_item("s", now=300)
    assert [v1, v2, v3, v4, v5] == [1, 2, 3, 4, 5] and catalogue.version() == 5
    snap = catalogue.snapshot()
    assert snap.version == 5
    # attributes merged, expiry kept (the second upsert did not name it), created at the first upsert
    assert snap.items["7"]["attributes"] == {"genres": ["comedy"], "directors": ["p1"]}
    assert snap.items["7"]["expires_at"] == 500 and snap.items["7"]["created_at"] == 100
    assert snap.item_rows() == [{"item_id": 7, "genres": ["comedy"], "directors": ["p1"]}]  # "s" is deleted
    rules = snap.rules()
    keys = np.array([item_key(7), item_key("x9"), item_key("s"), item_key(8)])
    assert rules.blocked(keys, now=499).tolist() == [False, True, True, False]
    assert rules.blocked(keys, now=500).tolist() == [True, True, True, False]  # expired at expires_at
    catalogue.hide_item("x9", now=400, hidden=False)
    catalogue.upsert_items([{"item_id": 7, "expires_at": None}], now=400)  # null clears the expiry
    assert catalogue.snapshot().rules().blocked(keys, now=10**9).tolist() == [False, False, True, False]
    catalogue.upsert_users([{"user_id": 3, "attributes": {"region": "2"}}])
    catalogue.delete_user("4")
    snap = catalogue.snapshot()
    assert snap.deleted_users() == {"4"} and snap.users["3"]["attributes"] == {"region": "2"}
    catalogue.upsert_users([{"user_id": "4"}])  # an upsert undoes a delete
    assert catalogue.snapshot().deleted_users() == set()


def test_store_refuses_bad_rows(catalogue):
    with pytest.raises(DataError, match=r"items\[0\].expires_at"):
        catalogue.upsert_items([{"item_id": 1, "expires_at": "soon"}], now=0)
    with pytest.raises(DataError, match=r"unknown fields \['colour'\]"):
        catalogue.upsert_items([{"item_id": 1, "colour": "red"}], now=0)
    with pytest.raises(DataError, match="item_id"):
        catalogue.upsert_items([{"attributes": {}}], now=0)
    assert catalogue.version() == 0  # nothing was written


# ------------------------------------------------------------------ Funnel.with_items
VECTOR = {"epochs": 1, "item_columns": ["genres", "directors"], "user_columns": ["gender"], "batch_size": 64}


@pytest.fixture(scope="module")
def ranked_funnel():
    from funnelrec.data.splits import random_split_by_user

    world = make_world()
    split = random_split_by_user(world.dataset.interactions, seed=1)
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 20}, {"name": "fresh", "n": 10}, {"name": "tag", "n": 10},
                                {"name": "author", "n": 10, "params": {"column": "directors"}}, {"name": "vector", "n": 10, "params": VECTOR}],
                   "merge": {"total": 40}},
        "rank": {"epochs": 1, "user_columns": ["gender"], "item_columns": ["release_year", "genres"],
                 "match_columns": ["genres"], "ridge_lambda": 1.0},
        "prerank": {"enabled": True, "keep": 20, "epochs": 1}})
    return FunnelBuilder(cfg).fit(world.dataset, split.train, labels=split.valid)


NEW_ITEMS = pl.DataFrame({"item_id": [1001, 1002], "release_year": ["1992", "2031"],
                          "publish_time": [T - 3600, T - 7200],
                          "genres": [["drama", "horror"], ["comedy"]], "directors": [["p1"], ["p9"]]})


def test_with_items_appends_and_keeps_old_indices(ranked_funnel, tmp_path):
    f = ranked_funnel
    I = f.dataset_.n_items
    g = f.with_items(NEW_ITEMS.vstack(pl.DataFrame({"item_id": [5], "release_year": [None], "publish_time": [None],
                                                    "genres": [["action"]], "directors": [None]},
                                                   schema=NEW_ITEMS.schema)))
    old_ids = f.dataset_.items["item_id"].to_list()
    assert g.dataset_.n_items == I + 2
    assert g.dataset_.items["item_id"].to_list() == old_ids + [1001, 1002]
    assert [g.dataset_.item_ids.index(i) for i in old_ids] == list(range(I))
    assert g.dataset_.items.row(I, named=True)["genres"] == ["drama", "horror"]
    # an existing item's given values replaced, the null ones kept
    row5 = g.dataset_.items.row(f.dataset_.item_ids.index(5), named=True)
    old5 = f.dataset_.items.row(f.dataset_.item_ids.index(5), named=True)
    assert row5["genres"] == ["action"] and row5["directors"] == old5["directors"]
    i5 = f.dataset_.item_ids.index(5)
    assert g.channels_["tag"].forward_.values(i5) == ["action"]  # the tag index reads the new attributes
    assert f.channels_["tag"].forward_.values(i5) == sorted(old5["genres"])
    assert g.stats_.history.shape == (f.dataset_.n_users, I + 2) and g.item_log_pop_[I:].tolist() == [0.0, 0.0]
    assert f.dataset_.n_items == I and len(f.channels_["vector"].item_vectors_) == I  # f is unchanged
    # the extended funnel still saves and loads: the loaded one answers exactly as it does
    ctx = RecallContext(time=T)
    users = np.arange(8)
    want = g.run(users, 10, context=ctx)
    h = Funnel.load(g.save(tmp_path / "extended"))
    assert h.dataset_.items["item_id"].to_list() == old_ids + [1001, 1002]
    assert h.channels_["vector"].index_.index.ntotal == I + 2
    got = h.run(users, 10, context=ctx)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    # the new items are candidates: global fresh list, by hand exp(−(t − publish)/τ), τ = 365 days
    batch = g.channels_["fresh"].recall(np.array([0]), 10, ctx)
    pos = {int(i): float(s) for i, s in zip(batch.items[0], batch.scores[0])}
    assert pos[I] == pytest.approx(np.exp(-3600 / (365 * DAY)), rel=1e-6)
    assert pos[I + 1] == pytest.approx(np.exp(-7200 / (365 * DAY)), rel=1e-6)


def test_new_item_vector_is_the_category_mean(ranked_funnel):
    f = ranked_funnel
    g = f.with_items(NEW_ITEMS)
    I = f.dataset_.n_items
    X = f.channels_["vector"].item_vectors_.astype(np.float64)
    items = f.dataset_.items
    for r, row in enumerate(NEW_ITEMS.iter_rows(named=True)):
        centroids = []
        for col in VECTOR["item_columns"]:
            for v in row[col] or []:
                holders = [j for j, vs in enumerate(items[col].to_list()) if vs is not None and v in vs]
                if holders:
                    centroids.append(X[holders].mean(0))
        want = np.mean(centroids, 0)
        want /= np.linalg.norm(want)
        np.testing.assert_allclose(g.channels_["vector"].item_vectors_[I + r], want, atol=1e-6)
    # and the vector channel can return it: its index holds it at dense index I
    ch = g.channels_["vector"]
    _, ids = ch.index_.search(ch.item_vectors_[I:I + 1], 1)
    assert int(ids[0, 0]) == I


def test_new_item_ranker_rows_are_the_learned_value_rows(ranked_funnel):
    f = ranked_funnel
    g = f.with_items(NEW_ITEMS)
    I = f.dataset_.n_items
    rf, names = f.ranker_.features_, None
    F_u = rf.user_rows_.shape[1]
    names = list(rf.spec_.field_names[F_u:F_u + rf.item_rows_.shape[1]])
    new_rows = g.ranker_.features_.item_rows_[I]
    year_col = names.index("release_year")
    j = f.dataset_.items["release_year"].to_list().index("1992")  # a fitted item of the same year
    assert new_rows[year_col] == rf.item_rows_[j, year_col] != 0
    assert new_rows[names.index("item_id")] == 0  # its id has no learned row yet
    # a year no fitted item had → row 0 ("no value"), not another value's row
    assert g.ranker_.features_.item_rows_[I + 1][year_col] == 0
    # the first genre field of a new item = the row that genre has in first position somewhere
    g0 = names.index("genres")
    holders = [k for k, vs in enumerate(f.dataset_.items["genres"].to_list()) if vs and vs[0] == "drama"]
    assert new_rows[g0] == rf.item_rows_[holders[0], g0] != 0
    # the pre-ranker and the ranker score the new items (no index error, finite scores)
    recs = g.run(np.arange(10), 40, context=RecallContext(time=T))
    assert any(I in r.items.tolist() for r in recs) and all(np.isfinite(r.scores).all() for r in recs)


def test_with_items_refuses_unknown_columns_and_types(ranked_funnel):
    with pytest.raises(DataError, match=r"\['colour'\]"):
        ranked_funnel.with_items(pl.DataFrame({"item_id": [1001], "colour": ["red"]}))
    with pytest.raises(DataError, match="column types"):
        ranked_funnel.with_items(pl.DataFrame({"item_id": ["not-an-int"]}))


# ------------------------------------------------------------------ two services, one Redis
@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_two_services_on_one_backend_share_the_catalogue(backend, request, tmp_path):
    """Two replicas on one Redis (or two workers on one state_dir) see one catalogue."""
    world = make_world()
    cfg = FunnelConfig.from_dict({"recall": {"channels": [{"name": "fresh", "n": 40}], "merge": {"total": 40}}})
    f = FunnelBuilder(cfg).fit(world.dataset, world.dataset.interactions)
    if backend == "redis":
        scfg = ServiceConfig(redis_url=request.getfixturevalue("redis_url"), redis_prefix=f"two-{tmp_path.name}:")
    else:
        scfg = ServiceConfig(state_dir=str(tmp_path / "state"))
    a, b = RecommenderService(f, scfg), RecommenderService(f, scfg)
    try:
        a.upsert_items([{"item_id": 5000, "attributes": {"genres": ["drama"], "publish_time": T - 60}}], now=T - 60)
        got = b.recommend("1", k=40, context={"time": T})
        assert got.item_ids[0] == 5000  # the freshest item, in the other replica's next answer
        assert got.rec.recall_scores[0][0] == pytest.approx(np.exp(-60 / (365 * DAY)), rel=1e-6)
        b.hide_item(5000)
        assert 5000 not in a.recommend("1", k=40, context={"time": T}).item_ids
        b.hide_item(5000, hidden=False)
        a.delete_item(2)
        out = b.recommend("1", k=40, context={"time": T}).item_ids
        assert 5000 in out and 2 not in out
    finally:
        a.close()
        b.close()


def test_extension_leaves_the_fitted_items_scores_alone():
    """Items whose attribute values no user has (new tags, new authors that sort before and
    among the old ones, so every old value's code shifts) change no user's candidates among
    the fitted items: the tag, author (with similar-author expansion) and fresh-by-tag
    channels give the same items with the same scores, and the new items only where a
    user's profile reaches them (nowhere)."""
    world = make_world()
    cfg = FunnelConfig.from_dict({"recall": {"channels": [
        {"name": "tag", "n": 30}, {"name": "author", "n": 30, "params": {"column": "authors", "k_similar": 3}},
        {"name": "fresh", "n": 30, "params": {"by_user_tags": True}}], "merge": {"total": 90}}})
    f = FunnelBuilder(cfg).fit(world.dataset, world.dataset.interactions)
    new = pl.DataFrame({"item_id": [3001, 3002, 3003], "genres": [["aaa-new"], ["mmm-new"], ["aaa-new"]],
                        "authors": [["a-new"], ["p35-new"], ["a-new"]], "publish_time": [T, T, T]})
    g = f.with_items(new)
    assert len(g.channels_["author"].forward_.vocab) == len(f.channels_["author"].forward_.vocab) + 2
    users = np.arange(world.dataset.n_users)
    for name in ("tag", "author", "fresh"):
        a, b = f.channels_[name].recall(users, 30), g.channels_[name].recall(users, 30)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    # fresh history holding new item 3001 (tag aaa-new): w(u, aaa-new) = 1, so the tag channel
    # offers 3003 at 1 · prior, the prior = the median of the fitted items' pop / max pop > 0
    I = f.dataset_.n_items
    pop = np.bincount(world.interactions["item_idx"].to_numpy(), minlength=I).astype(float)
    prior = np.median(pop[pop > 0] / pop.max())
    got = g.channels_["tag"].recall(np.array([-1]), 5, RecallContext(extra={"history": [np.array([I])]}))
    assert got.items[0].tolist() == [I + 2, -1, -1, -1, -1]
    assert got.scores[0, 0] == pytest.approx(prior, rel=1e-6)


def test_rows_the_served_funnel_cannot_hold_are_skipped_not_fatal():
    """A catalogue row that no longer fits the served items table (a reload dropped a column)
    is left out of the overlay and named; the other upserts and every rule still apply."""
    from funnelrec.pipeline.service import LiveCatalogue, LoadedFunnel

    world = make_world()
    cfg = FunnelConfig.from_dict({"recall": {"channels": [{"name": "fresh", "n": 40}], "merge": {"total": 40}}})
    f = FunnelBuilder(cfg).fit(world.dataset, world.dataset.interactions)
    cat = MemoryCatalogue()
    cat.upsert_items([{"item_id": 7001, "attributes": {"genres": ["drama"]}},
                      {"item_id": 7002, "attributes": {"colour": "red"}}], now=T - 5)
    cat.hide_item(3, now=T)
    live = LiveCatalogue.build(LoadedFunnel.build(f, "v"), cat)
    assert live.skipped == ["7002"]
    ds = live.loaded.funnel.dataset_
    assert ds.item_ids.index(7001) == f.dataset_.n_items and ds.item_ids.index(7002) == -1
    # its publish time is its first upsert (the schema's time column was not given)
    assert ds.items.row(ds.item_ids.index(7001), named=True)["publish_time"] == T - 5
    assert live.rules.blocked(np.array([item_key(3), item_key(4)]), now=T).tolist() == [True, False]


def test_a_new_item_in_fresh_history_is_never_recalled_again(ranked_funnel):
    """A user who consumed a new item (real-time history) is not offered it again by any channel
    that knows it, and the vector channel's user tower still runs (the item has no tower row)."""
    from funnelrec.core.types import RequestState

    g = ranked_funnel.with_items(NEW_ITEMS)
    I = ranked_funnel.dataset_.n_items
    users = np.array([0, 1, -1])
    ctx = RecallContext(time=T, extra={"history": [np.array([0, I, I + 1])] * 3})
    for name in ("fresh", "tag", "author", "vector"):
        before = g.channels_[name].recall(users, 40, RecallContext(time=T))
        after = g.channels_[name].recall(users, 40, ctx)
        assert not {I, I + 1} & set(after.items.ravel().tolist()), name
        if name in ("fresh", "vector"):  # without the history they do offer them
            assert {I, I + 1} & set(before.items.ravel().tolist()), name
    recs = g.run(users, 40, context=RecallContext(time=T), state=RequestState(history=[np.array([0, I, I + 1])] * 3))
    assert all(not {I, I + 1} & set(r.items.tolist()) for r in recs)


def test_ranker_features_of_fitted_items_are_unchanged_by_extension(ranked_funnel):
    """The extended ranker sees the fitted items exactly as before: the same embedding rows and
    the same match features (count_a, share_a, ridge) for every (user, fitted item) pair."""
    f = ranked_funnel
    g = f.with_items(NEW_ITEMS)
    I = f.dataset_.n_items
    np.testing.assert_array_equal(g.ranker_.features_.item_rows_[:I], f.ranker_.features_.item_rows_)
    rng = np.random.default_rng(0)
    u = rng.integers(0, f.dataset_.n_users, 300)
    i = rng.integers(0, I, 300)
    np.testing.assert_allclose(g.ranker_.features_.match_.transform(u, i), f.ranker_.features_.match_.transform(u, i),
                               rtol=1e-6)
    # a new item: counts over the same history, by hand for genres (history events sharing a value)
    got = g.ranker_.features_.match_.transform(u[:20], np.full(20, I))
    H = f.stats_.history
    genres = f.dataset_.items["genres"].to_list()
    for r, user in enumerate(u[:20].tolist()):
        hist = H.indices[H.indptr[user]:H.indptr[user + 1]]
        count = sum(len(set(genres[j] or []) & {"drama", "horror"}) for j in hist)
        assert got[r, 0] == pytest.approx(np.log1p(count), rel=1e-6)
        assert got[r, -1] == 0.0  # ridge(u, new item) = 0: B has no row for it yet


def test_every_registered_channel_serves_an_extended_funnel():
    """Over `RECALL_CHANNELS.names()` (a channel registered tomorrow is in it): the funnel with
    new items answers with fresh history and cached results that hold new items; a channel with
    `extend_items` knows the new rows, one without it never returns a new item (no neighbours
    until it is refitted or updated) and never fails on one in a history."""
    import funnelrec.recall  # noqa: F401  (registers every channel)
    from funnelrec.core.registry import RECALL_CHANNELS
    from funnelrec.core.types import RequestState

    world = make_world()
    params = {"vector": {"epochs": 1, "item_columns": ["genres"], "user_columns": ["gender"], "batch_size": 64}}
    names = RECALL_CHANNELS.names()
    chans = [{"name": n, "n": 10, **({"params": params[n]} if n in params else {})} for n in names]
    f = FunnelBuilder(FunnelConfig.from_dict({"recall": {"channels": chans, "merge": {"total": 60}}})).fit(
        world.dataset, world.dataset.interactions)
    g = f.with_items(pl.DataFrame({"item_id": [901, 902], "genres": [["drama"], ["comedy"]],
                                   "directors": [["p1"], ["p2"]], "publish_time": [T - 9, T - 8]}))
    I = f.dataset_.n_items
    users = np.array([0, 1, -1])
    hist = [np.array([0, I])] * 3
    cached = [(np.array([I + 1, 1]), np.array([2.0, 1.0], np.float32))] * 3
    ctx = RecallContext(time=T, region="1", extra={"history": hist},
                        state=RequestState(history=hist, cached=cached))
    for name in names:
        batch = g.channels_[name].recall(users, 10, ctx)
        got = set(batch.items.ravel().tolist())
        assert I not in got, name  # consumed (fresh history): never recalled again
        if not hasattr(g.channels_[name], "extend_items"):
            assert I + 1 not in got, name
    recs = g.run(users, 20, context=RecallContext(time=T, region="1"), state=RequestState(history=hist, cached=cached))
    assert any(I + 1 in r.items.tolist() for r in recs)  # the fresh channel offers the unconsumed one


def test_with_users_gives_a_new_user_the_learned_profile_rows(ranked_funnel, tmp_path):
    """A user upserted with attributes gets the next dense index, the learned rows of its values
    in the ranker's user fields (row 0 in user_id) and a pre-rank vector from its profile: two new
    users with one profile get one answer, another profile another; old users are unchanged."""
    f = ranked_funnel
    U = f.dataset_.n_users
    g = f.with_users(pl.DataFrame({"user_id": [5001, 5002, 5003], "gender": ["F", "F", "M"]}))
    assert g.dataset_.n_users == U + 3 and g.dataset_.user_ids.index(5001) == U
    assert [g.dataset_.user_ids.index(u) for u in f.dataset_.users["user_id"].to_list()] == list(range(U))
    rf = f.ranker_.features_
    names = list(rf.spec_.field_names[: rf.user_rows_.shape[1]])
    col = names.index("gender")
    genders = f.dataset_.users["gender"].to_list()
    rows = g.ranker_.features_.user_rows_
    assert rows[U, col] == rf.user_rows_[genders.index("F"), col] != 0
    assert rows[U + 2, col] == rf.user_rows_[genders.index("M"), col] != rows[U, col]
    assert rows[U, names.index("user_id")] == 0
    np.testing.assert_array_equal(rows[:U], rf.user_rows_)
    np.testing.assert_array_equal(g.prerank_.user_vectors_[: U + 1], f.prerank_.user_vectors_)
    ctx = RecallContext(time=T)
    a, b, c = g.run(np.array([U, U + 1, U + 2]), 10, context=ctx)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    assert not np.allclose(a.task_scores["ctr"], c.task_scores["ctr"])  # the profile reaches the ranker
    assert a.cold_start  # no history yet: the non-personalized channels recall for it
    h = Funnel.load(g.save(tmp_path / "with-users"))
    np.testing.assert_allclose(h.run(np.array([U]), 10, context=ctx)[0].scores, a.scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="shoe_size"):
        f.with_users(pl.DataFrame({"user_id": [1], "shoe_size": [44]}))


def test_the_service_serves_an_upserted_user_with_its_profile(ranked_funnel):
    svc = RecommenderService(ranked_funnel)
    try:
        unknown = svc.recommend("5001", k=10, context={"time": T})
        assert unknown.rec.user_idx == -1
        svc.upsert_users([{"user_id": 5001, "attributes": {"gender": "F"}}])
        known = svc.recommend("5001", k=10, context={"time": T})
        U = ranked_funnel.dataset_.n_users
        assert known.rec.user_idx == U  # the next dense index, on the next request
        want = ranked_funnel.with_users(pl.DataFrame({"user_id": [5001], "gender": ["F"]})).run(
            np.array([U]), 10, context=RecallContext(time=T))[0]
        np.testing.assert_allclose(known.rec.task_scores["ctr"], want.task_scores["ctr"], rtol=1e-6)
        svc.delete_user(5001)
        assert svc.recommend("5001", k=10, context={"time": T}).rec.user_idx == -1
    finally:
        svc.close()


def test_with_users_feeds_the_new_profile_to_the_vector_tower(ranked_funnel):
    """The vector channel's stored vector of a new user is the user tower over the profile codes
    of its values (those of a fitted user with the same gender) and an empty history."""
    import torch

    from funnelrec.core.types import PAD

    f = ranked_funnel
    U = f.dataset_.n_users
    g = f.with_users(pl.DataFrame({"user_id": [5001], "gender": ["M"]}))
    ch, old = g.channels_["vector"], f.channels_["vector"]
    j = f.dataset_.users["gender"].to_list().index("M")
    profile = old.features_.profile[j:j + 1]
    assert int(profile[0, 0]) != 0
    with torch.inference_mode():
        want = old.model_.user_tower(profile, torch.full((1, old.features_.hist.shape[1]), PAD)).numpy()
    np.testing.assert_allclose(ch.user_vectors_[U], want[0], atol=1e-6)
    np.testing.assert_array_equal(ch.user_vectors_[:U], old.user_vectors_)
    assert (ch.recall(np.array([U]), 10).items[0] >= 0).all()  # known now: recalled from its profile
    assert (old.recall(np.array([-1]), 10).items[0] < 0).all()  # an unknown user without history: nothing


def test_similar_answers_a_new_item_and_never_a_hidden_one():
    """/similar's service call on the live catalogue: a new item's neighbours are the vector
    channel's nearest items to its category-mean vector (by hand: inner products over all item
    vectors), and a hidden item is never among any item's neighbours."""
    world = make_world()
    cfg = FunnelConfig.from_dict({"recall": {"channels": [
        {"name": "itemcf", "n": 10}, {"name": "vector", "n": 10, "params": VECTOR}], "merge": {"total": 20}}})
    f = FunnelBuilder(cfg).fit(world.dataset, world.dataset.interactions)
    svc = RecommenderService(f)
    try:
        svc.upsert_items([{"item_id": 777, "attributes": {"genres": ["drama"], "directors": ["p3"]}}])
        cur, _ = svc.live_catalogue(svc.current)
        V = cur.funnel.channels_["vector"].item_vectors_.astype(np.float64)
        I = f.dataset_.n_items
        s = V[:I] @ V[I]  # the new item against every fitted item (itemCF knows no neighbour of it)
        want = cur.item_ids[np.argsort(-s, kind="stable")[:5]].tolist()
        got = svc.similar(777, 5)
        assert [it["item_id"] for it in got["items"]] == want
        assert all(it["channels"] == ["vector"] for it in got["items"])
        first = svc.similar(1, 5)["items"][0]["item_id"]
        svc.hide_item(first)
        for i in (1, 777, 3):
            assert first not in [it["item_id"] for it in svc.similar(i, 5)["items"]]
        assert len(svc.similar(1, 5)["items"]) == 5  # still k: the rules' room was asked for
    finally:
        svc.close()
