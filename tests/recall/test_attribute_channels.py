"""Hand-computed cases for swing, usercf, tag, fresh, geo, author, cache and the merge."""

import itertools

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError
from funnelrec.core.types import PAD, CandidateBatch
from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.schema import Schema
from funnelrec.recall.attributes import ForwardIndex, InvertedIndex
from funnelrec.recall.base import RecallContext
from funnelrec.recall.cache import CacheRecall
from funnelrec.recall.fresh import FreshConfig, FreshRecall
from funnelrec.recall.geo import GeoRecall
from funnelrec.recall.merge import MergeConfig, snake_merge
from funnelrec.recall.swing import swing_neighbours
from funnelrec.recall.tag import TagRecall
from funnelrec.recall.usercf import UserCFConfig, UserCFRecall

DAY = 86400


def small_world(pairs, items=None, users=None) -> TrainData:
    u, i = zip(*pairs)
    inter = pl.DataFrame({"user_id": list(u), "item_id": list(i), "timestamp": [10 * DAY] * len(pairs)})
    items = items if items is not None else pl.DataFrame({"item_id": sorted(set(i))})
    users = users if users is not None else pl.DataFrame({"user_id": sorted(set(u))})
    kinds = {"genres": "multi", "publish_time": "time", "region": "categorical"}
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time"},
                    users={c: kinds.get(c, "categorical") for c in users.columns},
                    items={c: kinds.get(c, "categorical") for c in items.columns})
    ds = Dataset.build("w", inter, schema, users=users, items=items)
    return TrainData(ds, ds.interactions)


@pytest.mark.parametrize("alpha, beta, gamma", [(1.0, 0.5, 0.0), (0.3, 0.8, 0.5)])
def test_swing_matches_brute_force_definition(alpha, beta, gamma):
    rng = np.random.default_rng(7)
    A = (rng.random((12, 8)) < 0.5).astype(np.float32)
    # caps at the largest row/column length are no caps: the result must not change
    N = swing_neighbours(sp.csr_matrix(A), k=8, alpha=alpha, user_weight_power=beta, popularity_power=gamma,
                         max_users_per_item=int(A.sum(0).max()), max_items_per_user=int(A.sum(1).max())).toarray()
    w = A.sum(1) ** -beta
    pop = A.sum(0)
    ref = np.zeros((8, 8))
    for i, j in itertools.permutations(range(8), 2):
        both = np.flatnonzero(A[:, i] * A[:, j])
        for u, v in itertools.combinations(both, 2):
            ov = int((A[u] * A[v]).sum())
            ref[i, j] += w[u] * w[v] / (alpha + ov)
        ref[i, j] /= (pop[i] * pop[j]) ** gamma
    np.testing.assert_allclose(N, ref, rtol=1e-5, atol=1e-8)


def test_usercf_scores_by_hand():
    # histories: u0 {0, 2}, u1 {0, 1}, u2 {2, 3, 5}, u3 {0, 2, 4}; popularity: items 0, 2 → 3, others → 1
    td = small_world([(0, 0), (0, 2), (1, 0), (1, 1), (2, 2), (2, 3), (2, 5), (3, 0), (3, 2), (3, 4)])
    w = 1 / np.log(4)  # hot-item damping of items 0 and 2
    s01, s02, s03 = w / np.sqrt(2 * 2), w / np.sqrt(2 * 3), 2 * w / np.sqrt(2 * 3)
    b = UserCFRecall().fit(td).recall(np.array([0]), 5)
    # item 4 via u3, item 1 via u1, items 3 and 5 via u2 (a tie: lower index first)
    assert b.items[0].tolist() == [4, 1, 3, 5, PAD]
    np.testing.assert_allclose(b.scores[0][:4], [s03, s01, s02, s02], rtol=1e-5)
    # k = 2 neighbours: u3 (0.59) and u1 (0.36) are kept, u2 (0.29) is not
    b = UserCFRecall(UserCFConfig(k=2)).fit(td).recall(np.array([0]), 5)
    assert b.items[0].tolist() == [4, 1, PAD, PAD, PAD]
    # without damping: sim = |I_u ∩ I_v| / sqrt(|I_u|·|I_v|)
    b = UserCFRecall(UserCFConfig(hot_damping=False)).fit(td).recall(np.array([0]), 2)
    np.testing.assert_allclose(b.scores[0], [2 / np.sqrt(6), 1 / 2], rtol=1e-5)


def test_tag_recall_by_hand():
    items = pl.DataFrame({"item_id": [0, 1, 2, 3], "genres": [["a"], ["a"], ["b"], ["a", "b"]]})
    # user 0 watched item 0 (tag a); popularity: item1 = 3, item3 = 1, item2 = 2
    td = small_world([(0, 0), (1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 3)], items=items)
    ch = TagRecall(from_dict(TagRecall.config_class, {"n_tags": 1})).fit(td)
    b = ch.recall(np.array([0]), 4)
    assert b.items[0].tolist() == [1, 3, PAD, PAD]  # tag a only, by popularity
    np.testing.assert_allclose(b.scores[0][:2], [1.0, 1 / 3], rtol=1e-6)
    inv = ch.inverted_
    assert inv.lookup("b")[0].tolist() == [2, 3]


def test_fresh_recall_newest_first_and_context_time():
    items = pl.DataFrame({"item_id": [0, 1, 2, 3], "publish_time": [5 * DAY, 9 * DAY, 1 * DAY, 30 * DAY],
                          "genres": [["a"], ["b"], ["a"], ["a"]]})
    td = small_world([(0, 0), (1, 2)], items=items)
    ch = FreshRecall(FreshConfig(tau_days=10.0)).fit(td)
    b = ch.recall(np.array([0, -1]), 4)
    assert b.items[0].tolist() == [1, 2, PAD, PAD]  # item 3 published after now (10 days); 0 seen
    assert b.items[1].tolist() == [1, 0, 2, PAD]
    np.testing.assert_allclose(b.scores[1][:3], np.exp(-np.array([1, 5, 9]) / 10.0), rtol=1e-5)
    b = ch.recall(np.array([-1]), 4, RecallContext(time=6 * DAY))
    assert b.items[0].tolist() == [0, 2, PAD, PAD]
    # served after `now`: item 3 (published on day 30, after training) is offered from day 30 on,
    # and the scores are fresh at the request's time
    b = ch.recall(np.array([-1]), 4, RecallContext(time=29 * DAY))
    assert b.items[0].tolist() == [1, 0, 2, PAD]
    b = ch.recall(np.array([-1]), 4, RecallContext(time=31 * DAY))
    assert b.items[0].tolist() == [3, 1, 0, 2]
    np.testing.assert_allclose(b.scores[0], np.exp(-np.array([1, 22, 26, 30]) / 10.0), rtol=1e-5)
    capped = FreshRecall(FreshConfig(tau_days=10.0, max_items=1)).fit(td)  # 1 newest past item + future ones
    assert capped.recall(np.array([-1]), 4, RecallContext(time=31 * DAY)).items[0].tolist() == [3, 1, PAD, PAD]
    tags = FreshRecall(FreshConfig(tau_days=10.0, by_user_tags=True)).fit(td)
    assert tags.personalized and tags.recall(np.array([1]), 4).items[0].tolist() == [0, PAD, PAD, PAD]
    # by tags, two candidates: item 4 (tag a, day 8) joins; each user's only tag is a, weight 1/1,
    # so score = exp(−(now − publish)/τ) at now = day 10; item 3 (day 30) is not yet published
    items4 = pl.DataFrame({"item_id": [0, 1, 2, 3, 4], "publish_time": [5 * DAY, 9 * DAY, 1 * DAY, 30 * DAY, 8 * DAY],
                           "genres": [["a"], ["b"], ["a"], ["a"], ["a"]]})
    tags = FreshRecall(FreshConfig(tau_days=10.0, by_user_tags=True)).fit(small_world([(0, 0), (1, 2)], items=items4))
    b = tags.recall(np.array([1, 0]), 4)
    assert b.items.tolist() == [[4, 0, PAD, PAD], [4, 2, PAD, PAD]]  # newest first; seen items left out
    np.testing.assert_allclose(b.scores[0][:2], np.exp(-np.array([2, 5]) / 10.0), rtol=1e-5)
    np.testing.assert_allclose(b.scores[1][:2], np.exp(-np.array([2, 9]) / 10.0), rtol=1e-5)


def test_geo_recall_by_region_and_context():
    users = pl.DataFrame({"user_id": [0, 1, 2, 3], "region": ["n", "n", "s", None]})
    td = small_world([(0, 0), (1, 0), (1, 1), (2, 2), (3, 3)], users=users)
    ch = GeoRecall().fit(td)
    b = ch.recall(np.array([0, 2, 3, -1]), 3)
    assert b.items[0].tolist() == [1, PAD, PAD]  # region n: item 0 (2), item 1 (1); 0 seen
    assert b.scores[0].tolist() == [1.0, -np.inf, -np.inf]
    assert b.items[1].tolist() == [PAD] * 3  # region s: only item 2, seen
    assert (b.items[2] == PAD).all() and (b.items[3] == PAD).all()  # null region, unknown user
    assert np.isneginf(b.scores[1:]).all()
    # scores are the region's play counts (tau_days = 0): n → item 0: 2, item 1: 1; s → item 2: 1
    b = ch.recall(np.array([-1]), 3, RecallContext(region="s"))
    assert b.items[0].tolist() == [2, PAD, PAD] and b.scores[0].tolist() == [1.0, -np.inf, -np.inf]
    b = ch.recall(np.array([-1, 2]), 3, RecallContext(region="n"))  # user 2 (region s) asks from n
    assert b.items.tolist() == [[0, 1, PAD], [0, 1, PAD]]
    assert b.scores.tolist() == [[2.0, 1.0, -np.inf]] * 2
    assert (ch.recall(np.array([-1]), 3, RecallContext(region="mars")).items == PAD).all()


def test_author_recall_prefers_consumed_authors(world):
    """n_authors = 1, no expansion: score(u, i) = share of u's history by its top director ×
    pop(i)/max pop, over that director's unseen items — computed here from the raw rows (each
    tiny-world item has one director). Users whose top director is tied get items of one of the
    tied directors."""
    from funnelrec.recall.author import AuthorConfig, AuthorRecall

    n = 5
    ch = AuthorRecall(AuthorConfig(column="directors", k_similar=0, n_authors=1)).fit(world)
    b = ch.recall(np.arange(world.n_users), n)
    items = world.dataset.items.sort("item_idx")
    director = np.array([d[0] for d in items["directors"].to_list()])
    inter = world.interactions
    u_idx, i_idx = inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy()
    pop = np.bincount(i_idx, minlength=world.n_items).astype(float)
    pop /= pop.max()
    checked_exact = 0
    for u in range(world.n_users):
        hist = i_idx[u_idx == u]
        names, counts = np.unique(director[hist], return_counts=True)
        top = names[counts == counts.max()]
        unseen = np.setdiff1d(np.arange(world.n_items), hist)
        got = b.items[u][b.items[u] != PAD]
        candidates = unseen[np.isin(director[unseen], top)]
        assert len(got) == min(n, len(candidates)) or len(top) > 1, u  # never an empty row by accident
        assert np.isin(director[got], top).all() and np.isin(got, unseen).all(), u
        if len(top) == 1:
            share = counts.max() / len(hist)
            want = sorted(candidates.tolist(), key=lambda i: (-pop[i], i))[:n]
            assert got.tolist() == want, u
            np.testing.assert_allclose(b.scores[u][: len(want)], share * pop[want], rtol=1e-5)
            checked_exact += 1
    assert checked_exact >= 15  # 18 of the 40 tiny-world users have one top director


def test_cache_recalls_the_request_state_minus_seen(world):
    from funnelrec.core.types import RequestState

    ch = CacheRecall().fit(world)
    seen = world.csr[0].indices
    unseen = np.setdiff1d(np.arange(world.n_items), seen)[:3]
    cached = [(np.r_[unseen, seen[:1], 99999], np.array([0.1, 0.9, 0.5, 2.0, 3.0], np.float32)), None]
    ctx = RecallContext(state=RequestState(cached=cached))
    b = ch.recall(np.array([0, 1]), 4, ctx)
    # best first; the seen item and the out-of-catalogue id are dropped; user 1 has no cached list
    assert b.items[0].tolist() == [unseen[1], unseen[2], unseen[0], PAD]
    np.testing.assert_allclose(b.scores[0, :3], [0.9, 0.5, 0.1])
    assert (b.items[1] == PAD).all()
    # nothing is stored on the channel: the same channel without state recalls nothing
    assert (ch.recall(np.array([0]), 4).items == PAD).all()


def test_forward_index_scalar_column_with_nulls():
    f = ForwardIndex.from_column(pl.DataFrame({"r": ["x", None, "y", "x"]}), "r")
    assert f.vocab.tolist() == ["x", "y"] and f.values(1) == [] and f.values(3) == ["x"]
    inv = InvertedIndex.build(f, np.array([1.0, 5.0, 2.0, 3.0]), max_per_value=1)
    assert inv.lookup("x")[0].tolist() == [3] and inv.lookup("zz")[0].size == 0
    with pytest.raises(ConfigError):
        ForwardIndex.from_column(pl.DataFrame({"r": ["x"]}), "nope")


def _batch(name, rows):
    n = max(len(r) for r in rows)
    it = np.full((len(rows), n), PAD, np.int64)
    sc = np.full((len(rows), n), -np.inf, np.float32)
    for u, r in enumerate(rows):
        it[u, : len(r)] = r
        sc[u, : len(r)] = np.arange(len(r), 0, -1)
    return CandidateBatch(name, it, sc)


def test_snake_merge_by_hand():
    a = _batch("a", [[1, 2, 3, 4], [9]])
    b = _batch("b", [[2, 5, 6], []])
    c = _batch("c", [[7, 1, 8], [9, 10]])
    m = snake_merge([a, b, c], quotas={"b": 1}, priority=["c", "a"], total=6)
    # turns: c7 a1 b2 (b hits quota) | c1→dup→8, a2→dup→3 | c done, a4
    assert m[0].items.tolist() == [7, 1, 2, 8, 3, 4]
    assert [m[0].channels_of(k) for k in range(6)] == [["c"], ["a", "c"], ["a", "b"], ["c"], ["a"], ["a"]]
    np.testing.assert_array_equal(m[0].scores[1], [4.0, np.nan, 2.0])
    assert m[1].items.tolist() == [9, 10] and m[1].channels_of(0) == ["a", "c"]
    m = snake_merge([a, b, c], total=3)
    assert m[0].items.tolist() == [1, 2, 7]


def test_merge_config_from_dict_and_errors():
    cfg = from_dict(MergeConfig, {"total": 10, "quotas": {"hot": 3}, "priority": ["itemcf", "hot"]})
    assert cfg.quotas == {"hot": 3} and cfg.priority == ["itemcf", "hot"]
    with pytest.raises(ConfigError):
        from_dict(MergeConfig, {"total": 0})
    with pytest.raises(ConfigError):
        snake_merge([_batch("a", [[1]]), _batch("a", [[2]])])
