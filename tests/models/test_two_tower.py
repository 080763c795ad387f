"""Two-tower model: pooling math and gradients, unit-norm outputs, learning a planted structure."""

import numpy as np
import pytest
import torch

from funnelrec.core.errors import ConfigError
from funnelrec.models.recall.two_tower import TwoTowerConfig, TwoTowerModel, TwoTowerSpec, bag_pool
from funnelrec.train.retrieval_losses import sampled_softmax_loss
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
