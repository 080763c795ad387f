"""nn.precision: the per-thread bf16 switch of the fused kernels, the kernels' bf16 forward and
backward against torch autograd on the same graph written with explicit bf16 casts, and
`row_dot` against autograd of the matrix-vector product."""

from __future__ import annotations

import threading

import pytest
import torch

from funnelrec.nn import precision
from funnelrec.nn.cross import cross_v2_stack
from funnelrec.nn.fused_mlp import relu_mlp


def _bf16_mm(a, b):
    """The reference's GEMM: operands rounded to bf16, a bf16 product, widened (autocast's)."""
    return (a.bfloat16() @ b.bfloat16()).float()


def _leaves(*ts):
    return [t.detach().clone().requires_grad_() for t in ts]


def test_the_switch_is_per_thread_nested_and_restored():
    seen = {}
    with precision.bf16_matmuls():
        assert precision.bf16_enabled()
        t = threading.Thread(target=lambda: seen.setdefault("other", precision.bf16_enabled()))
        t.start()
        t.join()
        with precision.bf16_matmuls(False):
            assert not precision.bf16_enabled()
        assert precision.bf16_enabled()
    assert not precision.bf16_enabled() and seen["other"] is False


@pytest.mark.parametrize("head", [1, 4, None])  # a one-column linear head (fp32), a 4-wide one (bf16), none (ReLU out)
def test_fused_mlp_in_bf16_is_autograd_of_the_bf16_cast_graph(head):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g)
    raw = [torch.randn(32, 20, generator=g) * 0.3, torch.randn(32, generator=g), torch.randn(16, 32, generator=g) * 0.3,
           torch.randn(16, generator=g)]
    if head:
        raw += [torch.randn(head, 16, generator=g), torch.randn(head, generator=g)]
    up = torch.randn(64, head or 16, generator=g)

    # reference: relu(bf16(h) · bf16(W)ᵀ + b) per hidden layer, then the head: fp32 h · wᵀ + b for
    # one column, bf16(h) · bf16(W)ᵀ + b for more
    xr, *pr = _leaves(x, *raw)
    h = xr
    for i in (0, 2):
        h = torch.relu(_bf16_mm(h, pr[i].t()) + pr[i + 1])
    if head == 1:
        h = (h * pr[4]).sum(1, keepdim=True) + pr[5]
    elif head:
        h = _bf16_mm(h, pr[4].t()) + pr[5]
    ref = h
    (ref * up).sum().backward()

    xf, *pf = _leaves(x, *raw)
    with precision.bf16_matmuls():
        out = relu_mlp(xf, pf, last_linear=bool(head))
    (out * up).sum().backward()  # outside the block: the node keeps its forward's precision
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    for q, r in zip([xf, *pf], [xr, *pr], strict=True):
        assert torch.allclose(q.grad, r.grad, rtol=1e-4, atol=1e-4)

    # and it is the fp32 network up to bf16 rounding (a dropped bias or mask would be far off)
    x64, *p64 = _leaves(x.double(), *[t.double() for t in raw])
    h = x64
    for i in (0, 2):
        h = torch.relu(h @ p64[i].t() + p64[i + 1])
    exact = h @ p64[4].t() + p64[5] if head else h
    assert (out.double() - exact).abs().max() < 0.05 * exact.abs().max()
    fp32 = relu_mlp(x, raw, last_linear=bool(head))
    assert not torch.equal(fp32, out)  # outside the block the GEMMs are fp32 again


def test_cross_v2_stack_in_bf16_is_autograd_of_the_bf16_cast_graph():
    g = torch.Generator().manual_seed(1)
    d, n = 24, 3
    x0 = torch.randn(32, d, generator=g)
    raw = [t for _ in range(n) for t in (torch.randn(d, d, generator=g) * 0.2, torch.randn(d, generator=g) * 0.1)]
    up = torch.randn(32, d, generator=g)

    x0r, *pr = _leaves(x0, *raw)
    x = x0r
    for i in range(n):  # x_{l+1} = x_l + x0 ⊙ (bf16(x_l) · bf16(W_l)ᵀ + b_l)
        x = x + x0r * (_bf16_mm(x, pr[2 * i].t()) + pr[2 * i + 1])
    (x * up).sum().backward()

    x0f, *pf = _leaves(x0, *raw)
    with precision.bf16_matmuls():
        out = cross_v2_stack(x0f, pf)
    (out * up).sum().backward()
    assert torch.allclose(out, x, rtol=1e-5, atol=1e-5)
    for q, r in zip([x0f, *pf], [x0r, *pr], strict=True):
        assert torch.allclose(q.grad, r.grad, rtol=1e-4, atol=1e-4)
    assert not torch.equal(cross_v2_stack(x0, raw), out)


def test_row_dot_is_the_matrix_vector_product_with_its_gradients():
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    up = torch.randn(9, generator=g, dtype=torch.float64)
    xr, wr = _leaves(x, w)
    (torch.mv(xr, wr) * up).sum().backward()
    xf, wf = _leaves(x, w)
    out = precision.row_dot(xf, wf)
    (out * up).sum().backward()
    assert torch.allclose(out, x @ w) and torch.allclose(xf.grad, xr.grad) and torch.allclose(wf.grad, wr.grad)
    assert torch.autograd.gradcheck(precision.row_dot, tuple(_leaves(x, w)))


def test_the_trainer_runs_fit_in_bf16_only_when_asked_and_only_inside_fit():
    from funnelrec.train.trainer import Trainer, TrainerConfig

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

        def forward(self, x):
            seen.append(precision.bf16_enabled())
            return x @ self.w

    data = {"x": torch.randn(8, 3), "y": torch.rand(8)}

    def loss(model, b):
        return torch.nn.functional.mse_loss(model(b["x"]), b["y"])

    for prec, expect in (("bf16", True), ("ieee", False)):
        seen.clear()
        Trainer(TrainerConfig(epochs=1, batch_size=4, num_threads=1, matmul_precision=prec)).fit(Probe(), loss, data)
        assert seen and all(s is expect for s in seen), (prec, seen)
        assert not precision.bf16_enabled()


def test_dcnv2_and_deepfm_steps_in_bf16_stay_the_fp32_steps_up_to_rounding():
    """The models' bf16 branches (DCNv2's row_dot head, DeepFM's fused MLP head): the same loss
    and gradients as the fp32 step within bf16 rounding, for every parameter."""
    from funnelrec.models.ranking.base import FeatureSpec
    from funnelrec.models.ranking.common import build_ranker

    spec = FeatureSpec(n_embeddings=50, n_fields=5, n_dense=3, field_names=("u", "i", "g", "g", "g"), pool_multi=True)
    g = torch.Generator().manual_seed(3)
    batch = {"sparse": torch.randint(0, 50, (256, 5), generator=g), "dense": torch.rand(256, 3, generator=g)}
    y = torch.randint(0, 2, (256,), generator=g).float()
    for name, cfg in (("dcnv2", {"embedding_dim": 8, "hidden": [32, 16], "dense_as_fields": False}),
                      ("deepfm", {"embedding_dim": 8, "hidden": [32, 16], "dense_as_fields": False})):
        runs = []
        for bf16 in (False, True):
            torch.manual_seed(0)
            m = build_ranker(name, spec, cfg)
            with precision.bf16_matmuls(bf16):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(m(batch)["ctr"], y)
            loss.backward()
            runs.append((loss.item(), {k: p.grad.clone() for k, p in m.named_parameters()}))
        (l32, g32), (l16, g16) = runs
        assert l32 != l16 and abs(l32 - l16) < 2e-3 * abs(l32), name
        for k in g32:  # relative error of each whole gradient (bf16 dx's do not cancel as fp32 ones do)
            scale = float(g32[k].norm())
            assert scale > 0 and float((g32[k] - g16[k]).norm()) < 0.05 * scale, (name, k, float((g32[k] - g16[k]).norm()) / scale)
