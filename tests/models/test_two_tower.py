"""Two-tower model: pooling math and gradients, unit-norm outputs, learning a planted structure."""

import numpy as np
import pytest
import torch

from funnelrec.core.errors import ConfigError
from funnelrec.models.recall.two_tower import TwoTowerConfig, TwoTowerModel, TwoTowerSpec, bag_pool
from funnelrec.train.retrieval_losses import sampled_softmax_loss
from funnelrec.train.row_sparse_adam import RowSparseAdam
from funnelrec.train.trainer import Trainer, TrainerConfig

SMALL = TwoTowerConfig(embedding_dim=8, user_hidden=(16,), item_hidden=(16,), output_dim=8, temperature=0.1)


@pytest.mark.parametrize("mean", [True, False])
def test_bag_pool_values_and_gradient_match_dense_reference(mean):
    rng = np.random.default_rng(0)
    W1 = torch.tensor(rng.normal(size=(6, 3)), requires_grad=True)
    W2 = W1.detach().clone().requires_grad_(True)
    rows = torch.tensor([[1, 2, 2, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    mask = rows > 0
    out = bag_pool(W1, rows, mask, mean=mean)
    # hand reference: gather, mask, sum / count
    m = mask.unsqueeze(-1).double()
    ref = (W2[rows] * m).sum(1)
    if mean:
        ref = ref / m.sum(1).clamp_min(1)
    torch.testing.assert_close(out, ref)
    assert torch.equal(out[2], torch.zeros(3, dtype=out.dtype))  # empty bag → zeros
    g = torch.tensor(rng.normal(size=(3, 3)))
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(W1.grad, W2.grad)
    assert torch.equal(W1.grad[0], torch.zeros(3, dtype=W1.grad.dtype))  # padding row gets no gradient


def test_towers_output_unit_vectors_and_ignore_padding():
    spec = TwoTowerSpec(n_items=10, n_attr_rows=5, n_item_fields=2, n_profile_rows=4, n_profile_fields=2)
    torch.manual_seed(0)
    m = TwoTowerModel(spec, SMALL).eval()
    v = m.item_tower(torch.arange(10), torch.randint(0, 5, (10, 2, 3)))
    assert v.shape == (10, 8)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(10))
    prof = torch.tensor([[1, 3], [1, 3]])
    a = m.user_tower(prof, torch.tensor([[2, 4, -1, -1], [2, 4, -1, -1]]))
    b = m.user_tower(prof[:1], torch.tensor([[2, 4]]))  # same history without padding
    torch.testing.assert_close(a[0], b[0])
    # score = cosine / τ
    s = m.score(a, v[:2])
    torch.testing.assert_close(s, (a * v[:2]).sum(1) / 0.1)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="pooling"):
        TwoTowerConfig(pooling="max")
    with pytest.raises(ConfigError, match="temperature"):
        TwoTowerConfig(temperature=0.0)


def test_learns_planted_clusters_far_above_random():
    """4 clusters of 10 items; each user consumes items of one cluster only. Items carry no
    attributes, so the towers must learn the clusters from co-occurrence alone."""
    rng = np.random.default_rng(0)
    n_users, n_items, n_clusters, L = 80, 40, 4, 5
    cluster_of_user = np.arange(n_users) % n_clusters
    hist = np.stack([rng.choice(np.arange(10) + 10 * c, L, replace=False) for c in cluster_of_user])
    users = np.repeat(np.arange(n_users), L)
    items = hist.reshape(-1)
    spec = TwoTowerSpec(n_items=n_items, n_attr_rows=1, n_item_fields=1, n_profile_rows=1, n_profile_fields=1)
    torch.manual_seed(0)
    model = TwoTowerModel(spec, SMALL)
    H = torch.from_numpy(hist)
    attrs = torch.zeros((n_items, 1, 1), dtype=torch.int64)
    prof = torch.zeros((n_users, 1), dtype=torch.int64)

    def loss_fn(m, batch):
        u, i = batch["user"], batch["item"]
        h = H[u].masked_fill(H[u] == i.unsqueeze(1), -1)
        return sampled_softmax_loss(m.user_tower(prof[u], h), m.item_tower(i, attrs[i]), m.temperature, None, i)

    train = {"user": torch.from_numpy(users), "item": torch.from_numpy(items)}
    Trainer(TrainerConfig(epochs=20, batch_size=200, lr=0.03, seed=0, num_threads=1)).fit(model, loss_fn, train)
    with torch.inference_mode():
        uv = model.user_tower(prof, H)
        iv = model.item_tower(torch.arange(n_items), attrs)
        s = (uv @ iv.T).numpy()
    s[np.arange(n_users)[:, None], hist] = -np.inf
    top = np.argsort(-s, axis=1)[:, :5]
    precision = (top // 10 == cluster_of_user[:, None]).mean()
    assert precision > 0.9  # random: 5 of 35 unseen items in the cluster → 0.14


# ---------------------------------------------------------------- row-sparse gradients
def _batch(spec, B=6, L=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, spec.n_items, (B, L), generator=g)
    hist[0, 2:] = -1  # padded history
    hist[1] = hist[2]  # repeated rows: their gradients must add up
    attrs = torch.randint(0, spec.n_attr_rows, (B, spec.n_item_fields, 3), generator=g)
    return {"profile": torch.randint(0, spec.n_profile_rows, (B, spec.n_profile_fields), generator=g),
            "hist": hist, "item": torch.randint(0, spec.n_items, (B,), generator=g), "item_attrs": attrs}


def test_sparse_gradients_equal_dense_gradients():
    spec = TwoTowerSpec(n_items=30, n_attr_rows=9, n_item_fields=2, n_profile_rows=5, n_profile_fields=2)
    torch.manual_seed(0)
    dense = TwoTowerModel(spec, SMALL)
    sparse = TwoTowerModel(spec, SMALL, sparse_grad=True)
    sparse.load_state_dict(dense.state_dict())
    batch = _batch(spec)
    for m in (dense, sparse):
        out = m(batch)
        sampled_softmax_loss(out["user"], out["item"], m.temperature, None, batch["item"]).backward()
    for d, s in zip(dense.embedding_tables(), sparse.embedding_tables()):
        assert not d.weight.grad.is_sparse and s.weight.grad.is_sparse
        if s is not sparse.item_id and s is not sparse.profile:  # bag tables: one value row per distinct row
            assert s.weight.grad._nnz() == s.weight.grad.coalesce()._nnz()
        torch.testing.assert_close(s.weight.grad.to_dense(), d.weight.grad)
        assert torch.equal(s.weight.grad.to_dense()[0], torch.zeros(SMALL.embedding_dim))  # padding row
        # only looked-up rows appear in the sparse gradient
        assert s.weight.grad.coalesce().indices().shape[1] < d.weight.shape[0]
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        if "mlp" in name:
            torch.testing.assert_close(q.grad, p.grad)


@pytest.mark.parametrize("mean", [True, False])
def test_sparse_bag_pool_matches_hand_reference(mean):
    W = torch.tensor(np.random.default_rng(1).normal(size=(6, 3)), requires_grad=True)
    rows = torch.tensor([[1, 2, 2, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=W.dtype)
    (bag_pool(W, rows, rows > 0, mean=mean, sparse=True) * g).sum().backward()
    # hand: row 1 gets g0·w, row 2 gets 2·g0·w (two lookups), row 5 gets g1; w = 1/3 (mean) or 1
    w = 1 / 3 if mean else 1.0
    ref = torch.zeros(6, 3, dtype=W.dtype)
    ref[1], ref[2], ref[5] = w * g[0], 2 * w * g[0], g[1]
    assert W.grad.is_sparse
    torch.testing.assert_close(W.grad.to_dense(), ref)


@pytest.mark.parametrize("optimizer", [torch.optim.SparseAdam, RowSparseAdam])
def test_sparse_adam_is_lazy_adam_on_touched_rows(optimizer):
    """Step 1 touches rows {1, 3}: SparseAdam = Adam on those rows. Step 2 touches row 3 only:
    row 1 stays put under SparseAdam (dense Adam would still move it by its momentum), row 3
    follows Adam's formula with the global step count t = 2."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    W0 = torch.tensor(np.random.default_rng(2).normal(size=(5, 2)), dtype=torch.float32)
    Ws, Wd = W0.clone().requires_grad_(True), W0.clone().requires_grad_(True)
    sa = optimizer([Ws], lr=lr, betas=(b1, b2), eps=eps)
    ad = torch.optim.Adam([Wd], lr=lr, betas=(b1, b2), eps=eps)
    g1 = torch.sparse_coo_tensor(torch.tensor([[1, 3, 3]]), torch.tensor([[1.0, -2.0], [0.5, 0.5], [0.5, 0.5]]), (5, 2), check_invariants=True)
    Ws.grad, Wd.grad = g1, g1.to_dense()
    sa.step()
    ad.step()
    torch.testing.assert_close(Ws.detach(), Wd.detach())
    assert torch.equal(Ws.detach()[[0, 2, 4]], W0[[0, 2, 4]])
    after1 = Ws.detach().clone()
    g2 = torch.tensor([3.0, -1.0])
    Ws.grad = torch.sparse_coo_tensor(torch.tensor([[3]]), g2.unsqueeze(0), (5, 2), check_invariants=True)
    sa.step()
    assert torch.equal(Ws.detach()[[0, 1, 2, 4]], after1[[0, 1, 2, 4]])  # lazy: untouched rows frozen
    g_1 = torch.tensor([1.0, 1.0])  # row 3's step-1 gradient (two lookups of 0.5)
    m = b1 * (1 - b1) * g_1 + (1 - b1) * g2
    v = b2 * (1 - b2) * g_1**2 + (1 - b2) * g2**2
    ref = after1[3] - lr * (m / (1 - b1**2)) / ((v / (1 - b2**2)).sqrt() + eps)
    torch.testing.assert_close(Ws.detach()[3], ref)
