"""The online learner (#10 item 4, core): incremental channel updates equal a full refit, the
label join, offsets/quarantine/crash safety of `OnlineLearner`, the Redis Stream source."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from tiny_world import make_world

from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.schema import Schema
from funnelrec.recall.fresh import FreshConfig, FreshRecall
from funnelrec.recall.hot import HotConfig, HotRecall
from funnelrec.recall.itemcf import ItemCFConfig, ItemCFRecall
from funnelrec.recall.swing import SwingConfig, SwingRecall


def _split(data: TrainData, frac: float = 0.7) -> tuple[TrainData, pl.DataFrame]:
    inter = data.interactions.sort("timestamp")
    cut = int(inter.height * frac)
    return TrainData(data.dataset, inter[:cut]), inter[cut:]


def _update(ch, new: pl.DataFrame):
    return ch.update(new["user_idx"].to_numpy(), new["item_idx"].to_numpy(), new["timestamp"].to_numpy())


def _dense(m: sp.csr_matrix) -> np.ndarray:
    return np.asarray(sp.csr_matrix(m).todense())


@pytest.mark.parametrize("cfg", [
    ItemCFConfig(k=10, similarity="cosine", user_damping="none"),
    ItemCFConfig(k=5, similarity="asymmetric", asymmetry=0.3, user_damping="iuf"),
    ItemCFConfig(k=8, similarity="jaccard", user_damping="inverse", shrink=1.0, normalize=True),
])
def test_itemcf_update_equals_refit_on_concatenated_data(cfg):
    data = make_world(seed=3)
    head, tail = _split(data)
    base = ItemCFRecall(cfg).fit(head)
    inc = base
    for chunk in (tail[: tail.height // 2], tail[tail.height // 2:]):  # two steps
        inc = _update(inc, chunk)
    full = ItemCFRecall(cfg).fit(data)
    assert inc.neighbours_.shape == full.neighbours_.shape
    np.testing.assert_array_equal(_dense(inc.neighbours_), _dense(full.neighbours_))  # same arithmetic
    np.testing.assert_array_equal(_dense(inc.history_.seen), _dense(full.history_.seen))
    assert not np.array_equal(_dense(base.neighbours_), _dense(full.neighbours_))  # the update did something
    users = np.arange(data.n_users)
    np.testing.assert_array_equal(inc.recall(users, 10).items, full.recall(users, 10).items)


def _tiny(pairs: list[tuple[int, int]], n_items: int = 4) -> TrainData:
    inter = pl.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                          "timestamp": np.arange(len(pairs)) + 1_000_000})
    items = pl.DataFrame({"item_id": np.arange(n_items)})
    users = pl.DataFrame({"user_id": np.arange(3)})
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time"},
                    users={"user_id": "categorical"}, items={"item_id": "categorical"})
    ds = Dataset.build("hand", inter, schema, users=users, items=items)
    return TrainData(ds, ds.interactions)


def test_itemcf_update_hand_computed_cosine():
    """Train u0 {0, 1}, u1 {1, 2}; events u2 → 0, 1; u0 → 2; u1 → 3 (an item nobody had). Then
    |U_0| = 2, |U_1| = 3, |U_2| = 2, |U_3| = 1; c(0,1) = 2, c(0,2) = 1, c(1,2) = 2, c(1,3) = c(2,3) = 1,
    cosine c / √(|U_i||U_j|)."""
    data = _tiny([(0, 0), (0, 1), (1, 1), (1, 2)])
    ch = ItemCFRecall(ItemCFConfig(k=10, similarity="cosine", user_damping="none")).fit(data)
    u = data.dataset.user_ids.indices(["2", "2", "0", "1"])
    i = data.dataset.item_ids.indices(["0", "1", "2", "3"])
    got = _dense(ch.update(u, i).neighbours_)
    r6, r3, r2 = math.sqrt(6), math.sqrt(3), math.sqrt(2)
    want = np.array([[0, 2 / r6, 0.5, 0], [2 / r6, 0, 2 / r6, 1 / r3], [0.5, 2 / r6, 0, 1 / r2], [0, 1 / r3, 1 / r2, 0]])
    idx = data.dataset.item_ids.indices(["0", "1", "2", "3"])
    np.testing.assert_allclose(got[np.ix_(idx, idx)], want, rtol=1e-6)
    before = _dense(ch.neighbours_)[np.ix_(idx, idx)]
    assert before[0, 2] == 0 and before[1, 3] == 0  # these pairs come from the events only


def test_itemcf_update_grows_the_catalogue():
    """A pair on an item index beyond the fitted catalogue (a live-catalogue item) gets a row."""
    data = make_world(seed=1)
    ch = ItemCFRecall(ItemCFConfig(k=5, user_damping="none", similarity="cosine")).fit(data)
    I = data.n_items
    users = np.array([0, 1, 2])
    new = ch.update(users, np.full(3, I), n_items=I + 1)
    assert new.neighbours_.shape == (I + 1, I + 1)
    assert new.neighbours_[I].nnz > 0  # the new item has neighbours: the items of its 3 users
    assert set(new.neighbours_[I].indices) <= set(np.unique(data.csr[users].indices))
    assert ch.neighbours_.shape == (I, I)  # the fitted channel is unchanged


@pytest.mark.parametrize("cfg", [
    SwingConfig(k=10, max_users_per_item=0, max_items_per_user=0),
    SwingConfig(k=6, alpha=0.5, popularity_power=0.3, max_users_per_item=0, max_items_per_user=0),
    SwingConfig(k=6, max_users_per_item=5, max_items_per_user=0),  # a cap: every row recomputed
])
def test_swing_update_equals_refit_on_concatenated_data(cfg):
    data = make_world(seed=4)
    head, tail = _split(data)
    inc = _update(SwingRecall(cfg).fit(head), tail)
    full = SwingRecall(cfg).fit(data)
    np.testing.assert_array_equal(_dense(inc.neighbours_), _dense(full.neighbours_))


@pytest.mark.parametrize("tau", [0.0, 7.0])
def test_hot_update_equals_refit_on_concatenated_data(tau):
    data = make_world(seed=5)
    head, tail = _split(data, 0.6)
    inc = HotRecall(HotConfig(tau_days=tau)).fit(head)
    for chunk in (tail[:50], tail[50:]):
        inc = _update(inc, chunk)
    full = HotRecall(HotConfig(tau_days=tau)).fit(data)
    assert inc.now_ == full.now_ == int(data.interactions["timestamp"].max())
    np.testing.assert_allclose(inc.popularity_, full.popularity_, rtol=1e-9)
    if tau == 0:  # plain counts: the item's number of interactions, independent of the code
        counts = np.bincount(data.interactions["item_idx"].to_numpy(), minlength=data.n_items)
        np.testing.assert_array_equal(inc.popularity_, counts)
        np.testing.assert_array_equal(inc.items_, full.items_)


def test_hot_update_hand_computed_decay():
    """τ = 1 day: item a seen at t0 (fit), then b at t0 + 1 day: hot(a) = e^-1, hot(b) = 1."""
    data = _tiny([(0, 0)], n_items=2)
    t0 = int(data.interactions["timestamp"].max())
    ch = HotRecall(HotConfig(tau_days=1.0)).fit(data)
    b = data.dataset.item_ids.index("1")
    new = ch.update(np.array([1]), np.array([b]), np.array([t0 + 86400]))
    a = data.dataset.item_ids.index("0")
    assert new.popularity_[a] == pytest.approx(math.exp(-1))
    assert new.popularity_[b] == pytest.approx(1.0)
    assert new.items_.tolist() == [b, a]


def test_fresh_update_moves_the_present():
    data = make_world(seed=6)
    head, tail = _split(data, 0.5)
    cfg = FreshConfig(max_items=5)
    inc = _update(FreshRecall(cfg).fit(head), tail)
    full = FreshRecall(cfg).fit(data)
    assert inc.now_ == full.now_
    np.testing.assert_array_equal(inc.items_, full.items_)
    np.testing.assert_array_equal(_dense(inc.history_.seen), _dense(full.history_.seen))
