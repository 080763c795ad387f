"""The contract of every registered recall model (RECALL_MODELS.names(); a name without an
input builder here fails): the fixed seed gives identical vectors, user and item vectors of a
batch equal those computed one row at a time, the weights round-trip through `state_dict`, and
the score is the documented ⟨u, v⟩/τ of unit vectors."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import funnelrec.models.recall.two_tower  # noqa: F401  (registers two_tower)
from funnelrec.core.registry import RECALL_MODELS
from funnelrec.models.recall.two_tower import TwoTowerConfig, TwoTowerSpec
from funnelrec.train.trainer import Trainer, TrainerConfig

N_ITEMS, N_USERS = 50, 40


def _two_tower_case():
    """(spec, config, training tensors, user batch, item batch) for a tiny two-tower."""
    spec = TwoTowerSpec(n_items=N_ITEMS, n_attr_rows=9, n_item_fields=2, n_profile_rows=6, n_profile_fields=2)
    cfg = TwoTowerConfig(embedding_dim=8, user_hidden=(16,), item_hidden=(16,), output_dim=8, temperature=0.1)
    g = torch.Generator().manual_seed(0)
    item_attrs = torch.randint(0, 9, (N_ITEMS, 2, 3), generator=g)  # row 0 = pad
    profile = torch.randint(0, 6, (N_USERS, 2), generator=g)
    hist = torch.randint(-1, N_ITEMS, (N_USERS, 5), generator=g)  # -1 = PAD
    users = torch.randint(0, N_USERS, (400,), generator=g)
    pos = torch.randint(0, N_ITEMS, (400,), generator=g)
    neg = torch.randint(0, N_ITEMS, (400,), generator=g)
    train = {"profile": profile[users], "hist": hist[users], "item": pos, "item_attrs": item_attrs[pos],
             "neg": neg, "neg_attrs": item_attrs[neg]}
    user_batch = (profile, hist)
    item_batch = (torch.arange(N_ITEMS), item_attrs)
    return spec, cfg, train, user_batch, item_batch


INPUTS = {"two_tower": _two_tower_case}


def _bpr(model, b):
    u = model.user_tower(b["profile"], b["hist"])
    s_pos = model.score(u, model.item_tower(b["item"], b["item_attrs"]))
    s_neg = model.score(u, model.item_tower(b["neg"], b["neg_attrs"]))
    return -F.logsigmoid(s_pos - s_neg).mean()


def _case(name):
    if name not in INPUTS:
        pytest.fail(f"recall model {name!r} is registered but has no input builder in {__file__} INPUTS")
    return INPUTS[name]()


def _trained(name, seed):
    spec, cfg, train, users, items = _case(name)
    torch.manual_seed(seed)
    model = RECALL_MODELS.get(name)(spec, cfg)
    Trainer(TrainerConfig(epochs=2, batch_size=64, lr=1e-2, seed=seed, num_threads=1)).fit(model, _bpr, train)
    return model.eval(), users, items


def _vectors(model, users, items):
    with torch.inference_mode():
        return model.user_tower(*users).clone(), model.item_tower(*items).clone()


def test_two_tower_is_registered():
    assert "two_tower" in RECALL_MODELS.names()
    assert set(RECALL_MODELS.names()) <= set(INPUTS), "recall models without an input builder here"


@pytest.mark.parametrize("name", RECALL_MODELS.names())
def test_fixed_seed_gives_identical_vectors(name):
    m1, users, items = _trained(name, seed=3)
    m2, _, _ = _trained(name, seed=3)
    u1, v1 = _vectors(m1, users, items)
    u2, v2 = _vectors(m2, users, items)
    torch.testing.assert_close(u2, u1, rtol=0, atol=0)
    torch.testing.assert_close(v2, v1, rtol=0, atol=0)
    m3, _, _ = _trained(name, seed=4)
    assert not torch.equal(_vectors(m3, users, items)[0], u1)


@pytest.mark.parametrize("name", RECALL_MODELS.names())
def test_batch_vectors_equal_one_by_one(name):
    model, users, items = _trained(name, seed=3)
    u, v = _vectors(model, users, items)
    with torch.inference_mode():
        u1 = torch.cat([model.user_tower(*(x[r : r + 1] for x in users)) for r in range(len(u))])
        v1 = torch.cat([model.item_tower(*(x[r : r + 1] for x in items)) for r in range(len(v))])
    torch.testing.assert_close(u1, u, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v1, v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", RECALL_MODELS.names())
def test_unit_vectors_and_score_is_cosine_over_temperature(name):
    model, users, items = _trained(name, seed=3)
    u, v = _vectors(model, users, items)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(len(u)), rtol=0, atol=1e-5)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(len(v)), rtol=0, atol=1e-5)
    with torch.inference_mode():
        s = model.score(u[:5], v[:5])
        s3 = model.score(u[:5], v[None, :7].expand(5, 7, -1))
    tau = model.temperature
    torch.testing.assert_close(s, (u[:5] * v[:5]).sum(1) / tau, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s3, u[:5] @ v[:7].T / tau, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", RECALL_MODELS.names())
def test_state_dict_round_trip_gives_identical_vectors(name):
    model, users, items = _trained(name, seed=3)
    want = _vectors(model, users, items)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    spec, cfg, *_ = _case(name)
    torch.manual_seed(99)
    fresh = RECALL_MODELS.get(name)(spec, cfg).eval()
    assert not torch.equal(_vectors(fresh, users, items)[0], want[0])
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    got = _vectors(fresh, users, items)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", RECALL_MODELS.names())
def test_artifact_round_trip_gives_identical_vectors(name, tmp_path):
    """Through core/persist.py (no pickle): rebuilt from its constructor record, weights restored."""
    from funnelrec.core.persist import load_state, save_state

    model, users, items = _trained(name, seed=3)
    want = _vectors(model, users, items)
    save_state(model, tmp_path / "model")
    back = load_state(tmp_path / "model").eval()
    assert type(back) is type(model)
    got = _vectors(back, users, items)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
