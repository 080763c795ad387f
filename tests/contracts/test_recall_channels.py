"""The contract every registered recall channel passes (RECALL_CHANNELS.names()), on the tiny
world of tests/tiny_world.py: fixed-width output (PAD tail, descending scores, no duplicates),
never a seen item, batch = one-by-one (items and scores), the fixed seed gives identical items
and scores, save/load round trip, and a defined answer for unknown users (-1 or past the last
index): nothing from a personalized channel, the hand-computed global list from hot and fresh,
nothing from geo without a region and the region's list with one."""

import numpy as np
import pytest

import funnelrec.recall  # noqa: F401  (registers every channel)
from funnelrec.core.errors import ArtifactError, NotFittedError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import PAD, RequestState
from funnelrec.recall.base import RecallChannel, RecallContext

CHANNELS = RECALL_CHANNELS.names()
N = 12
DAY = 86400
# what an unknown user gets, per non-personalized channel (test_unknown_user); a new
# non-personalized channel must say here what it answers
UNKNOWN_USER_ANSWER = {"hot": "global list", "fresh": "global list", "geo": "region list"}


def _small_config(name):
    """Defaults for every channel, except a short training run for the trained ones."""
    if name == "vector":
        from funnelrec.recall.vector import VectorRecallConfig

        return VectorRecallConfig(epochs=2)
    return None


def _build(name, world):
    return RECALL_CHANNELS.get(name)(_small_config(name)).fit(world)


def _cached_results(world):
    """Every user's previous result list (25 items, random scores), as the service keeps them."""
    rng = np.random.default_rng(1)
    return [(rng.choice(world.n_items, 25, replace=False), rng.random(25).astype(np.float32))
            for _ in range(world.n_users)]


def _recall(name, ch, world, users, n=N):
    """The channel's answer for `users`; the cache channel reads each user's previous results
    from the request state (one row per user, None for unknown users), as `Funnel.run` passes it."""
    context = None
    if name == "cache":
        cached = _cached_results(world)
        context = RecallContext(state=RequestState(cached=[cached[u] if 0 <= u < world.n_users else None
                                                           for u in users]))
    return ch.recall(np.asarray(users), n, context)


@pytest.fixture(scope="module", params=CHANNELS)
def fitted(request, world):
    return request.param, _build(request.param, world)


def test_the_known_channels_are_registered():
    assert {"hot", "itemcf", "usercf", "swing", "vector", "fresh", "geo", "tag", "author", "cache", "ease"} <= set(CHANNELS)


def test_unfitted_recall_raises():
    for name in CHANNELS:
        with pytest.raises(NotFittedError, match=name):
            RECALL_CHANNELS.get(name)(_small_config(name)).recall(np.array([0]), 5)


def test_fixed_width_pad_tail_descending_no_duplicates(fitted, world):
    name, ch = fitted
    users = np.arange(world.n_users)
    b = _recall(name, ch, world, users)
    assert b.items.shape == b.scores.shape == (world.n_users, N)
    assert b.items.dtype == np.int64 and b.scores.dtype == np.float32
    assert ((b.items == PAD) | ((b.items >= 0) & (b.items < world.n_items))).all()
    pad = b.items == PAD
    assert (np.diff(pad.astype(int), axis=1) >= 0).all(), f"{name}: PAD before a real item"
    assert np.isneginf(b.scores[pad]).all() and np.isfinite(b.scores[~pad]).all()
    s = np.where(pad, -np.inf, b.scores)
    with np.errstate(invalid="ignore"):  # -inf − -inf in the PAD tail
        assert (np.diff(s, axis=1)[~pad[:, 1:]] <= 0).all(), f"{name}: scores not descending"
    for r in range(world.n_users):
        got = b.items[r][b.items[r] != PAD]
        assert len(set(got.tolist())) == len(got), f"{name}: duplicate items for user {r}"
    # most users get a full row on this world (a channel that recalls little is broken)
    assert (~pad).all(axis=1).mean() > 0.5, f"{name}: fewer than half the users got {N} items"


def test_never_returns_a_seen_item(fitted, world):
    name, ch = fitted
    b = _recall(name, ch, world, np.arange(world.n_users))
    seen = np.zeros((world.n_users, world.n_items), bool)
    inter = world.interactions
    seen[inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy()] = True  # from the raw rows
    rows = np.broadcast_to(np.arange(world.n_users)[:, None], b.items.shape)
    hit = (b.items != PAD) & seen[rows, np.maximum(b.items, 0)]
    assert not hit.any(), f"{name} returned seen items: {np.argwhere(hit)[:5].tolist()}"


def test_batch_equals_one_by_one(fitted, world):
    name, ch = fitted
    users = np.array([3, 0, 17, 3, -1, 25, world.n_users + 2])
    b = _recall(name, ch, world, users)
    for r, u in enumerate(users):
        one = _recall(name, ch, world, np.array([u]))
        np.testing.assert_array_equal(one.items[0], b.items[r], err_msg=f"{name}, user {u}")
        np.testing.assert_allclose(one.scores[0], b.scores[r], rtol=1e-5, atol=1e-6, err_msg=f"{name}, user {u}")
    pair = _recall(name, ch, world, users[:2])
    np.testing.assert_array_equal(pair.items, b.items[:2])


def test_fixed_seed_gives_identical_items_and_scores(fitted, world):
    name, ch = fitted
    again = _build(name, world)
    users = np.arange(world.n_users)
    a, c = _recall(name, ch, world, users), _recall(name, again, world, users)
    np.testing.assert_array_equal(c.items, a.items, err_msg=name)
    np.testing.assert_array_equal(c.scores, a.scores, err_msg=name)


def test_save_load_round_trip(fitted, world, tmp_path):
    # the channel's own save() writes the state directory a funnel artifact holds (no pickle)
    name, ch = fitted
    path = tmp_path / name
    ch.save(path)
    assert (path / "state.json").is_file() and not list(path.rglob("*.pkl"))
    back = RecallChannel.load(path)
    users = np.arange(world.n_users)
    a, c = _recall(name, ch, world, users), _recall(name, back, world, users)
    np.testing.assert_array_equal(a.items, c.items)
    np.testing.assert_array_equal(a.scores, c.scores)


def _hand_hot(world, tau_days=30.0):
    """Σ exp(−(now − t)/τ) per item over the raw rows, best first, ties by lower index."""
    inter = world.interactions
    t = inter["timestamp"].to_numpy().astype(float)
    pop = np.zeros(world.n_items)
    np.add.at(pop, inter["item_idx"].to_numpy(), np.exp(-(t.max() - t) / (tau_days * DAY)))
    order = sorted(range(world.n_items), key=lambda i: (-pop[i], i))
    return [i for i in order if pop[i] > 0][:N], pop


def _hand_fresh(world, tau_days=365.0):
    """Items published by now (the last training timestamp), newest first, exp(−age/τ)."""
    now = int(world.interactions["timestamp"].max())
    items = world.dataset.items.sort("item_idx")
    pub = items["publish_time"].to_numpy().astype(float)
    order = sorted((i for i in range(len(pub)) if pub[i] <= now), key=lambda i: (-pub[i], i))[:N]
    return order, np.exp(-(now - pub[order]) / (tau_days * DAY))


def test_unknown_user(fitted, world):
    name, ch = fitted
    b = _recall(name, ch, world, np.array([-1, world.n_users + 5]))
    np.testing.assert_array_equal(b.items[0], b.items[1])  # past the last index = unknown
    if ch.personalized:
        assert name not in UNKNOWN_USER_ANSWER
        assert (b.items == PAD).all(), f"{name} recalled for an unknown user"
        return
    assert name in UNKNOWN_USER_ANSWER, f"non-personalized channel {name!r}: add its unknown-user answer here"
    if name == "hot":
        items, pop = _hand_hot(world)
        assert b.items[0].tolist() == items
        np.testing.assert_allclose(b.scores[0], pop[items], rtol=1e-5)
    elif name == "fresh":
        items, scores = _hand_fresh(world)
        assert b.items[0].tolist() == items
        np.testing.assert_allclose(b.scores[0], scores, rtol=1e-5)
    elif name == "geo":
        assert (b.items == PAD).all()  # no region known
        # with a context region: the plain counts among that region's users (tau 0)
        users = world.dataset.users.sort("user_idx")
        region = users["region"].to_numpy()
        inter = world.interactions
        in_r = region[inter["user_idx"].to_numpy()] == "1"
        counts = np.bincount(inter["item_idx"].to_numpy()[in_r], minlength=world.n_items)
        want = sorted((i for i in range(world.n_items) if counts[i] > 0), key=lambda i: (-counts[i], i))[:N]
        got = ch.recall(np.array([-1]), N, RecallContext(region="1"))
        assert got.items[0][got.items[0] != PAD].tolist() == want
        np.testing.assert_allclose(got.scores[0][: len(want)], counts[want], rtol=1e-6)


def test_load_rejects_foreign_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"not a channel")
    with pytest.raises(ArtifactError):
        RecallChannel.load(p)
