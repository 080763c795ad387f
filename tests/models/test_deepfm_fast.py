"""DeepFM's fast paths (pooled lookup, raw dense features), MLP in-place ReLU, the Trainer's
matmul_precision option: each against a hand-written reference."""

import pytest
import torch
import torch.nn.functional as F

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.common import FieldEmbedder, build_ranker
from funnelrec.nn.embedding import field_groups, gather_pool
from funnelrec.nn.mlp import MLP
from funnelrec.train.trainer import Trainer, TrainerConfig

NAMES = ("user_id", "item_id", "genres", "genres", "genres", "age")
SPEC = FeatureSpec(n_embeddings=30, n_fields=6, n_dense=3, field_names=NAMES, pool_multi=True)


def _batch(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    sparse = torch.randint(1, 30, (n, 6), generator=g)
    sparse[0, 2:5] = 0  # no genre at all: the pooled field is zero
    sparse[1, 3:5] = 0  # one genre of three
    return {"sparse": sparse, "dense": torch.rand(n, 3, generator=g)}


def test_field_groups():
    assert field_groups(("a", "g", "g", "b", "g")) == [0, 1, 1, 2, 3]
    assert field_groups(()) == []


def test_gather_pool_equals_loop_and_scatters_gradient():
    torch.manual_seed(0)
    w = torch.randn(30, 4)
    w[0] = 0
    w = w.requires_grad_()
    rows = _batch()["sparse"]
    group = torch.tensor(field_groups(NAMES))
    out = gather_pool(w, rows, group, 4)
    want = torch.zeros(7, 4, 4)
    for b in range(7):
        for gi in range(4):
            cols = [f for f in range(6) if group[f] == gi]
            present = [rows[b, f] for f in cols if rows[b, f] > 0]
            if present:
                want[b, gi] = torch.stack([w[r] for r in present]).sum(0) / len(present)
    assert torch.allclose(out, want.detach(), atol=1e-6)
    assert out[0, 2].abs().sum() == 0 and torch.allclose(out[1, 2], w[rows[1, 2]].detach())
    up = torch.randn(7, 4, 4)
    out.backward(up)
    w2 = w.detach().clone().requires_grad_()
    ref = F.embedding(rows, w2, padding_idx=0)  # mean pooling through autograd
    cnt = torch.stack([(rows[:, 2:5] > 0).sum(1).clamp_min(1)], 1).float()
    pooled = torch.cat([ref[:, :2], (ref[:, 2:5].sum(1, keepdim=True) / cnt.unsqueeze(-1)), ref[:, 5:]], 1)
    pooled.backward(up)
    assert torch.allclose(w.grad, w2.grad, atol=1e-6) and w.grad[0].abs().sum() == 0


def test_pooled_embedding_equals_field_embedder_pooling():
    torch.manual_seed(0)
    model = build_ranker("deepfm", SPEC, {"embedding_dim": 4, "hidden": [8]})
    ref = FieldEmbedder(FeatureSpec(30, 6, field_names=NAMES, pool_multi=True), 4)
    ref.embedding.embedding.weight.data.copy_(model.embedding.embedding.weight.data)
    b = _batch()
    assert torch.allclose(model.embedding(b["sparse"]), ref(b), atol=1e-6)


def _fm(v):
    return sum((v[:, i] * v[:, j]).sum(-1) for i in range(v.shape[1]) for j in range(i + 1, v.shape[1]))


@pytest.mark.parametrize("as_fields", [True, False])
def test_deepfm_equals_its_formula(as_fields):
    torch.manual_seed(1)
    model = build_ranker("deepfm", SPEC, {"embedding_dim": 4, "hidden": [8, 8], "dense_as_fields": as_fields})
    with torch.no_grad():
        model.linear.weight.weight.normal_()
        model.linear.weight.weight[0] = 0
    b = _batch()
    s, x = b["sparse"], b["dense"]
    e = model.embedding.embedding.weight.detach()[s]  # (B, 6, 4)
    cnt = (s[:, 2:5] > 0).sum(1).clamp_min(1).float()[:, None]
    v = torch.stack([e[:, 0], e[:, 1], e[:, 2:5].sum(1) / cnt, e[:, 5]], 1)  # (B, 4 fields, 4)
    lin = model.linear.weight.weight.detach()[s].sum((1, 2)) + model.linear.dense(x).squeeze(-1) + model.linear.bias
    if as_fields:
        v = torch.cat([v, x.unsqueeze(-1) * model.dense_fields.weight], 1)  # (B, 7, 4)
        mlp_in = v.flatten(1)
    else:
        mlp_in = torch.cat([v.flatten(1), x], 1)
    assert model.deep.net[0].in_features == mlp_in.shape[1] == (28 if as_fields else 19)
    with torch.no_grad():
        want = lin + _fm(v) + model.deep(mlp_in).squeeze(-1)
        got = model(b)["ctr"]
    assert torch.allclose(got, want, atol=1e-5)


def test_deepfm_needs_dense_when_built_with_it():
    model = build_ranker("deepfm", SPEC, {"dense_as_fields": False})
    with pytest.raises(DataError, match="dense"):
        model({"sparse": _batch()["sparse"]})


def test_mlp_inplace_relu_gradients_equal_functional_reference():
    torch.manual_seed(0)
    mlp = MLP(5, (6, 4), out_dim=1)
    x = torch.randn(9, 5, requires_grad=True)
    mlp(x).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (l1, _, l2, _, l3) = mlp.net
    ps = [p.detach().clone().requires_grad_() for p in mlp.parameters()]
    h = F.relu(F.linear(F.relu(F.linear(x2, ps[0], ps[1])), ps[2], ps[3]))
    F.linear(h, ps[4], ps[5]).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    for p, q in zip(mlp.parameters(), ps):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_trainer_matmul_precision_is_scoped_to_fit():
    with pytest.raises(ConfigError, match="matmul_precision"):
        TrainerConfig(matmul_precision="fp8")
    mkl = getattr(torch.backends.mkldnn, "matmul", None)
    if mkl is None or not hasattr(mkl, "fp32_precision"):
        pytest.skip("this torch has no oneDNN fp32 matmul precision setting")
    before = mkl.fp32_precision
    seen = []
    net = torch.nn.Linear(3, 1)
    x, y = torch.randn(64, 3), torch.randn(64)

    def loss(m, b):
        seen.append(mkl.fp32_precision)
        return F.mse_loss(m(b["x"]).squeeze(-1), b["y"])

    Trainer(TrainerConfig(epochs=2, batch_size=32, num_threads=1, matmul_precision="bf16")).fit(net, loss, {"x": x, "y": y})
    assert set(seen) == {"bf16"} and mkl.fp32_precision == before


@pytest.mark.parametrize("pool,dim", [(True, 4), (False, 4), (True, 10)])
def test_fused_kernels_equal_the_torch_path_in_values_and_gradients(pool, dim):
    spec = SPEC if pool else FeatureSpec(n_embeddings=30, n_fields=6, n_dense=3)
    torch.manual_seed(2)
    fused = build_ranker("deepfm", spec, {"embedding_dim": dim, "hidden": [8], "dense_as_fields": False})
    plain = build_ranker("deepfm", spec, {"embedding_dim": dim, "hidden": [8], "dense_as_fields": False, "fused": False})
    with torch.no_grad():
        fused.linear.weight.weight.normal_()
        fused.linear.weight.weight[0] = 0
    plain.load_state_dict(fused.state_dict())
    b = _batch(n=33)
    up = torch.randn(33)
    outs = []
    for m in (fused, plain):
        out = m(b)["ctr"]
        (out * up).sum().backward()
        outs.append(out.detach())
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name
    emb_grad = fused.embedding.embedding.weight.grad
    assert emb_grad[0].abs().sum() == 0 and emb_grad.abs().sum() > 0


@pytest.mark.parametrize("out_dim", [1, None])
def test_fused_mlp_equals_sequential_mlp_in_values_and_gradients(out_dim):
    torch.manual_seed(3)
    fused = MLP(5, (6, 4), out_dim=out_dim, fused=True)
    plain = MLP(5, (6, 4), out_dim=out_dim)
    plain.load_state_dict(fused.state_dict())
    assert fused.fused and not MLP(5, (6,), dropout=0.1, fused=True).fused  # dropout: sequential path
    x = torch.randn(17, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    up = torch.randn(17, fused.out_dim)
    y, y2 = fused(x), plain(x2)
    (y * up).sum().backward()
    (y2 * up).sum().backward()
    assert torch.allclose(y, y2, atol=1e-6) and torch.allclose(x.grad, x2.grad, atol=1e-6)
    for p, q in zip(fused.parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
    assert (y2 >= 0).all() if out_dim is None else True
