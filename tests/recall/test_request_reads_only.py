"""Contract over every registered recall channel: a request changes nothing fitted (issue #15),
and item indices outside the catalogue in a request's history are ignored, not stored.

The check compares the channel's pickled bytes before and after requests: any attribute a
request writes (a counter, a lazily built table, a cache) changes them."""

import pickle

import numpy as np
import pytest

import funnelrec.recall  # noqa: F401  (registers every channel)
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.recall.base import RecallContext

DAY = 86400
N = 8


def _fit(name, world):
    cfg = None
    if name == "vector":
        from funnelrec.recall.vector import VectorRecallConfig

        cfg = VectorRecallConfig(epochs=1)
    return RECALL_CHANNELS.get(name)(cfg).fit(world)


@pytest.mark.parametrize("name", RECALL_CHANNELS.names())
def test_requests_leave_the_fitted_channel_unchanged(name, world):
    ch = _fit(name, world)
    before = pickle.dumps(ch)
    users = np.array([0, 3, -1, world.n_users + 5, 3])  # known, unknown (-1) and out-of-range users
    history = [np.array([1, -4, world.n_items + 2]), np.array([], np.int64), np.array([2, 999]),
               np.array([5]), np.array([world.n_items])]
    ctx = RecallContext(time=1_000_000_000 + 50 * DAY, region="1", extra={"history": history})
    ch.recall(users, N, ctx)
    ch.recall(users[:1], N)
    ch.recall(users, N, ctx)
    assert pickle.dumps(ch) == before, f"{name}: a request changed the channel's state"


@pytest.mark.parametrize("name", RECALL_CHANNELS.names())
def test_out_of_catalogue_history_items_are_ignored(name, world):
    ch = _fit(name, world)
    users = np.array([2, -1])
    clean = RecallContext(extra={"history": [np.array([4]), np.array([0, 1])]})
    dirty = RecallContext(extra={"history": [np.array([-5, 4, world.n_items + 3]), np.array([0, 10**9, 1, -1])]})
    want, got = ch.recall(users, N, clean), ch.recall(users, N, dirty)
    np.testing.assert_array_equal(got.items, want.items, err_msg=name)
    np.testing.assert_array_equal(got.scores, want.scores, err_msg=name)
