"""nn.fused_fm's kernel pairs (one per embedding dimension) and nn.fused_mlp's `grad_cols`,
each against torch autograd over the written-out formula."""

import pytest
import torch

from funnelrec.nn import precision
from funnelrec.nn.fused_fm import fused_fm_block, fused_pool
from funnelrec.nn.fused_mlp import relu_mlp

GROUP = torch.tensor([0, 1, 2, 2, 2, 3])  # one multi-valued field of three columns


def _data(d, n=37, n_rows=40, n_dense=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n_rows, d, generator=g)
    emb[0] = 0
    w = torch.randn(n_rows, 1, generator=g)
    w[0] = 0
    rows = torch.randint(1, n_rows, (n, 6), generator=g)
    rows[0, 2:5] = 0  # an empty multi-valued field: its mean is zero
    rows[1, 3:5] = 0  # one value of three
    rows[2, 0] = 0  # a padded single field
    dense = torch.rand(n, n_dense, generator=g)
    a = torch.randn(1, n_dense, generator=g)
    return emb, w, rows, dense, a


def _pooled(emb, rows):
    """(B, 4 fields, D) by the definition: each field's mean over its non-padding rows."""
    e = emb[rows] * (rows > 0).unsqueeze(-1)
    cnt = (rows[:, 2:5] > 0).sum(1).clamp_min(1).unsqueeze(-1)
    return torch.stack([e[:, 0], e[:, 1], e[:, 2:5].sum(1) / cnt, e[:, 5]], 1)


@pytest.mark.parametrize("d", [3, 10, 16])
def test_fused_fm_block_equals_the_formula_in_values_and_gradients(d):
    emb, w, rows, dense, a = _data(d)
    n = rows.shape[0]
    leaves = [t.clone().requires_grad_() for t in (emb, w, dense, a)]
    refs = [t.clone().requires_grad_() for t in (emb, w, dense, a)]
    x, fm, lin = fused_fm_block(leaves[0], leaves[1], rows, GROUP, 4, leaves[2], leaves[3])
    e, wr, xr, ar = refs
    v = _pooled(e, rows)
    want_x = torch.cat([v.flatten(1), xr], 1)
    want_fm = sum((v[:, i] * v[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    want_lin = (wr[rows] * (rows > 0).unsqueeze(-1)).sum((1, 2)) + xr @ ar[0]
    assert x.shape == (n, 4 * d + 5)
    for got, want in ((x, want_x), (fm, want_fm), (lin, want_lin)):
        assert torch.allclose(got, want, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    ups = [torch.randn(t.shape, generator=g) for t in (x, fm, lin)]
    sum((o * u).sum() for o, u in zip((x, fm, lin), ups)).backward()
    sum((o * u).sum() for o, u in zip((want_x, want_fm, want_lin), ups)).backward()
    for name, p, q in zip(("emb", "w", "dense", "a"), leaves, refs):
        assert torch.allclose(p.grad, q.grad, atol=1e-4), name
    assert leaves[0].grad[0].abs().sum() == 0 and leaves[1].grad[0] == 0  # padding row: no gradient


def test_fused_fm_block_without_dense_and_with_constant_dense():
    emb, w, rows, dense, _ = _data(10)
    x, fm, lin = fused_fm_block(emb, w, rows, GROUP, 4)
    v = _pooled(emb, rows)
    assert x.shape == (rows.shape[0], 40) and torch.allclose(x, v.flatten(1), atol=1e-6)
    x2, fm2, lin2 = fused_fm_block(emb, w, rows, GROUP, 4, dense)  # no weights: the linear term ignores dense
    assert torch.equal(x2[:, 40:], dense) and torch.allclose(lin2, lin) and torch.allclose(fm2, fm)


@pytest.mark.parametrize("d", [4, 16])
def test_fused_pool_equals_pooling_then_concat(d):
    emb, _, rows, dense, _ = _data(d)
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    d1, d2 = dense.clone().requires_grad_(), dense.clone().requires_grad_()
    x = fused_pool(e1, rows, GROUP, 4, d1)
    want = torch.cat([_pooled(e2, rows).flatten(1), d2], 1)
    assert torch.allclose(x, want, atol=1e-6)
    up = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    (x * up).sum().backward()
    (want * up).sum().backward()
    assert torch.allclose(e1.grad, e2.grad, atol=1e-5) and torch.allclose(d1.grad, d2.grad)
    assert e1.grad[0].abs().sum() == 0


@pytest.mark.parametrize("bf16", [False, True])
def test_relu_mlp_grad_cols_keeps_the_wanted_columns_and_every_parameter_gradient(bf16):
    torch.manual_seed(4)
    params = [torch.randn(8, 6) * 0.5, torch.randn(8) * 0.1, torch.randn(1, 8) * 0.5, torch.zeros(1)]
    x = torch.randn(19, 6)
    grads = []
    for cols in (None, 4):
        ps = [p.clone().requires_grad_() for p in params]
        xi = x.clone().requires_grad_()
        with precision.bf16_matmuls(bf16):
            relu_mlp(xi, ps, last_linear=True, grad_cols=cols).sum().backward()
        grads.append((xi.grad, [p.grad for p in ps]))
    (full, pf), (part, pp) = grads
    assert torch.allclose(part[:, :4], full[:, :4], atol=1e-6) and part[:, 4:].abs().sum() == 0
    assert full[:, 4:].abs().sum() > 0  # the skipped columns had a gradient to skip
    for a, b in zip(pf, pp):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="grad_cols"):
        relu_mlp(x, params, last_linear=True, grad_cols=7)
