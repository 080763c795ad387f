"""Contract tests every registered recall channel passes, on the tiny world."""

import numpy as np
import pytest

import funnelrec.recall  # noqa: F401  (registers every channel)
from funnelrec.core.errors import ArtifactError, NotFittedError
from funnelrec.core.registry import RECALL_CHANNELS
from funnelrec.core.types import PAD
from funnelrec.recall.base import RecallChannel, RecallContext

CHANNELS = RECALL_CHANNELS.names()
N = 12


def _small_config(name):
    """Defaults for every channel, except a short training run for the trained ones."""
    if name == "vector":
        from funnelrec.recall.vector import VectorRecallConfig

        return VectorRecallConfig(epochs=2)
    return None


def _build(name, world):
    ch = RECALL_CHANNELS.get(name)(_small_config(name)).fit(world)
    if name == "cache":  # fed by the request state: give every user a previous result list
        rng = np.random.default_rng(1)
        table = [(rng.choice(world.n_items, 15, replace=False), rng.random(15).astype(np.float32))
                 for _ in range(world.n_users)]
        return _WithCachedState(ch, table)
    return ch


class _WithCachedState:
    """The cache channel as the funnel calls it: each request carries the users' previous results."""

    def __init__(self, ch, table):
        self.ch, self.table = ch, table

    def recall(self, users, n, context=None):
        from funnelrec.core.types import RequestState

        users = np.asarray(users)
        cached = [self.table[u] if 0 <= u < len(self.table) else None for u in users.tolist()]
        base = context or RecallContext()
        ctx = RecallContext(base.time, base.region, base.extra, state=RequestState(cached=cached))
        return self.ch.recall(users, n, ctx)

    def __getattr__(self, name):
        return getattr(self.ch, name)


@pytest.fixture(scope="module", params=CHANNELS)
def fitted(request, world):
    return request.param, _build(request.param, world)


def test_every_channel_is_registered():
    for name in ("hot", "itemcf"):
        assert name in CHANNELS


def test_unfitted_recall_raises():
    with pytest.raises(NotFittedError):
        RECALL_CHANNELS.build("hot").recall(np.array([0]), 5)


def test_shape_dtype_and_descending(fitted, world):
    name, ch = fitted
    users = np.arange(world.n_users)
    b = ch.recall(users, N)
    assert b.items.shape == b.scores.shape == (world.n_users, N)
    assert b.items.dtype == np.int64 and b.scores.dtype == np.float32
    assert ((b.items == PAD) | ((b.items >= 0) & (b.items < world.n_items))).all()
    # PAD only at the tail, with -inf scores
    pad = b.items == PAD
    assert (np.diff(pad.astype(int), axis=1) >= 0).all(), name
    assert np.isneginf(b.scores[pad]).all() and np.isfinite(b.scores[~pad]).all()
    s = np.where(pad, -np.inf, b.scores)
    with np.errstate(invalid="ignore"):  # -inf − -inf in the PAD tail
        assert (np.diff(s, axis=1)[~pad[:, 1:]] <= 0).all(), f"{name}: scores not descending"
    # no duplicates within a row
    for r in range(world.n_users):
        got = b.items[r][b.items[r] != PAD]
        assert len(set(got.tolist())) == len(got)
    assert (~pad).sum() > 0, f"{name} recalled nothing on the tiny world"


def test_never_returns_seen(fitted, world):
    name, ch = fitted
    b = ch.recall(np.arange(world.n_users), N)
    seen = world.csr.toarray() > 0
    rows = np.repeat(np.arange(world.n_users), N).reshape(-1, N)
    hit = (b.items != PAD) & seen[rows, np.maximum(b.items, 0)]
    assert not hit.any(), f"{name} returned seen items"


def test_batch_equals_one_by_one(fitted, world):
    name, ch = fitted
    users = np.array([3, 0, 17, 3, -1, 25])
    b = ch.recall(users, N)
    for r, u in enumerate(users):
        one = ch.recall(np.array([u]), N)
        np.testing.assert_array_equal(one.items[0], b.items[r], err_msg=name)
        np.testing.assert_allclose(one.scores[0], b.scores[r], rtol=1e-5, atol=1e-6, err_msg=name)


def test_unknown_user(fitted, world):
    name, ch = fitted
    b = ch.recall(np.array([-1, world.n_users + 5]), N)
    if ch.personalized:
        assert (b.items == PAD).all(), f"{name} recalled for an unknown user"
    elif name == "hot":
        assert (b.items[0] != PAD).any()


def test_save_load_round_trip(fitted, world, tmp_path):
    name, ch = fitted
    path = tmp_path / f"{name}.bin"
    ch.save(path)
    back = RecallChannel.load(path)
    users = np.arange(world.n_users)
    a, c = ch.recall(users, N), back.recall(users, N)
    np.testing.assert_array_equal(a.items, c.items)
    np.testing.assert_array_equal(a.scores, c.scores)


def test_same_seed_same_output(fitted, world):
    name, ch = fitted
    again = _build(name, world)
    users = np.arange(world.n_users)
    np.testing.assert_array_equal(ch.recall(users, N).items, again.recall(users, N).items)


def test_load_rejects_foreign_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"not a channel")
    with pytest.raises(ArtifactError):
        RecallChannel.load(p)


def test_unknown_history_items_are_ignored(world):
    ch = RECALL_CHANNELS.build("itemcf").fit(world)
    base = ch.recall(np.array([2]), N)
    ctx = RecallContext(extra={"history": [np.array([-5, world.n_items + 3])]})
    b = ch.recall(np.array([2]), N, ctx)
    np.testing.assert_array_equal(b.items, base.items)


def test_context_history_counts_as_seen_and_as_trigger(world):
    ch = RECALL_CHANNELS.build("itemcf").fit(world)
    b = ch.recall(np.array([-1]), N, RecallContext(extra={"history": [np.array([0, 1])]}))
    got = b.items[0][b.items[0] != PAD]
    assert len(got) > 0 and not np.isin(got, [0, 1]).any()
