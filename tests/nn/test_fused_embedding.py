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


def _reference_mlp(x, params, head, bf16):
    """The network written out in torch: ReLU layers, then a linear head (one column: fp32, as
    nn.fused_mlp's GEMV; more: a GEMM like the others); GEMM operands rounded to bf16 if `bf16`."""
    def mm(a, w):
        return (a.bfloat16() @ w.t().bfloat16()).float() if bf16 else a @ w.t()

    h = x
    n_hidden = len(params) // 2 - (1 if head else 0)
    for i in range(n_hidden):
        h = torch.relu(mm(h, params[2 * i]) + params[2 * i + 1])
    if head:
        w, b = params[-2], params[-1]
        h = (h @ w.t() if head == 1 else mm(h, w)) + b
    return h


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("hidden,head", [((9,), 1), ((9, 8, 6), 1), ((9, 8), 3), ((9, 8), None), ((), 1)])
def test_relu_mlp_grad_cols_gives_the_wanted_input_columns_and_every_parameter_gradient(bf16, hidden, head):
    g = torch.Generator().manual_seed(4)
    sizes = [6, *hidden] + ([head] if head else [])
    params = []
    for a, b in zip(sizes, sizes[1:]):
        params += [torch.randn(b, a, generator=g) * 0.5, torch.randn(b, generator=g) * 0.1]
    x = torch.randn(19, 6, generator=g)
    up = torch.randn(19, sizes[-1], generator=g)
    ps, xi = [p.clone().requires_grad_() for p in params], x.clone().requires_grad_()
    with precision.bf16_matmuls(bf16):
        out = relu_mlp(xi, ps, last_linear=bool(head), grad_cols=4)
    (out * up).sum().backward()
    rs, xr = [p.clone().requires_grad_() for p in params], x.clone().requires_grad_()
    ref = _reference_mlp(xr, rs, head, bf16)
    (ref * up).sum().backward()
    tol = 1e-4 if bf16 else 1e-5
    assert torch.allclose(out, ref, atol=tol)
    assert torch.allclose(xi.grad[:, :4], xr.grad[:, :4], atol=tol)
    assert xi.grad[:, 4:].abs().sum() == 0 and xr.grad[:, 4:].abs().sum() > 0  # skipped, and there was something to skip
    for p, r in zip(ps, rs):
        assert torch.allclose(p.grad, r.grad, atol=tol)
    with pytest.raises(ValueError, match="grad_cols"):
        relu_mlp(x, params, last_linear=bool(head), grad_cols=7)


def test_no_sparse_field_and_no_dense_edge_cases():
    emb, w, rows, dense, a = _data(6)
    x, fm, lin = fused_fm_block(emb, w, rows[:, :0], GROUP[:0], 0, dense, a)  # dense features only
    assert torch.equal(x, dense) and torch.equal(fm, torch.zeros(rows.shape[0]))
    assert torch.allclose(lin, dense @ a[0])
    x = fused_pool(emb, rows, GROUP, 4)  # no dense columns
    assert torch.allclose(x, _pooled(emb, rows).flatten(1), atol=1e-6)
