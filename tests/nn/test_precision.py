"""nn.precision: the per-thread bf16 switch of the fused kernels, the kernels' bf16 forward and
backward against torch autograd on the same graph written with explicit bf16 casts, and
`row_dot` against autograd of the matrix-vector product."""

from __future__ import annotations

import threading

import pytest
import torch

from funnelrec.nn import precision
from funnelrec.nn.cross import cross_v2_dot, cross_v2_stack
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


@pytest.mark.parametrize("n", [1, 2, 3])  # one layer: the head's layer is also the first
def test_cross_v2_dot_in_bf16_is_autograd_of_the_bf16_cast_graph_under_its_head(n):
    g = torch.Generator().manual_seed(3 + n)
    d = 21
    x0 = torch.randn(40, d, generator=g)
    w = torch.randn(d, generator=g)
    raw = [t for _ in range(n) for t in (torch.randn(d, d, generator=g) * 0.2, torch.randn(d, generator=g) * 0.1)]
    up = torch.randn(40, generator=g)

    x0r, wr, *pr = _leaves(x0, w, *raw)
    x = x0r
    for i in range(n):
        x = x + x0r * (_bf16_mm(x, pr[2 * i].t()) + pr[2 * i + 1])
    ref = x @ wr  # the fp32 one-column head
    (ref * up).sum().backward()

    x0f, wf, *pf = _leaves(x0, w, *raw)
    with precision.bf16_matmuls():
        out = cross_v2_dot(x0f, pf, wf)
    (out * up).sum().backward()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-4)
    for q, r in zip([x0f, wf, *pf], [x0r, wr, *pr], strict=True):
        assert torch.allclose(q.grad, r.grad, rtol=1e-4, atol=1e-4), (q.shape, (q.grad - r.grad).abs().max())
    # and outside the block: the fp32 stack and row_dot
    x0e, we, *pe = _leaves(x0, w, *raw)
    x = x0e
    for i in range(n):
        x = x + x0e * (x @ pe[2 * i].t() + pe[2 * i + 1])
    assert torch.allclose(cross_v2_dot(x0, raw, w), x @ we, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="width"):
        cross_v2_dot(x0, raw, w[:-1])


def test_dcnv2_bf16_step_through_the_fused_cross_head_is_the_unfused_one():
    """DCNv2's bf16 branch (`CrossNetV2.dot` on a view of the head weight) against the same step
    with the stack's own node followed by `row_dot` (the branch before the fusion): loss and
    every gradient."""
    from funnelrec.models.ranking.base import FeatureSpec
    from funnelrec.models.ranking.dcn import DCNv2

    torch.manual_seed(0)
    spec = FeatureSpec(n_embeddings=50, n_fields=4, n_dense=3)
    m = DCNv2(spec, DCNv2.Config(embedding_dim=4, cross_layers=2, hidden=(16, 8), dense_as_fields=False))
    batch = {"sparse": torch.randint(1, 50, (64, 4)), "dense": torch.randn(64, 3)}
    y = torch.randint(0, 2, (64,)).float()
    grads = []
    for fused in (True, False):
        if not fused:  # the instance attribute shadows the method
            m.cross.dot = lambda x0, w: precision.row_dot(m.cross(x0), w)
        m.zero_grad()
        with precision.bf16_matmuls():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(batch)["ctr"], y)
        loss.backward()
        grads.append((loss.item(), {k: p.grad.clone() for k, p in m.named_parameters()}))
    (l1, g1), (l2, g2) = grads
    assert abs(l1 - l2) < 1e-5 and set(g1) == set(g2)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-4, atol=1e-6), k


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


def test_round_bf16_and_widen_are_torchs_conversions_bit_for_bit():
    import numba
    import numpy as np

    @numba.njit
    def rnd(a, out):
        for i in range(a.size):
            out[i] = precision.round_bf16(a[i])

    rng = np.random.default_rng(0)
    special = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001, 0x807FFFFF,
                        0x3F808000, 0x3F818000, 0xBF808000, 0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF,
                        0xFFFFFFFF], dtype=np.uint32)  # ±0, ±inf, max, subnormals, ties, NaN payloads
    bits = np.concatenate([special, rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)])
    got = np.empty(bits.size, dtype=np.uint16)
    rnd(bits, got)
    ref = torch.from_numpy(bits.view(np.float32)).bfloat16()
    ours = torch.from_numpy(got.view(np.int16)).view(torch.bfloat16)
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(ours), nan) and int(nan.sum()) > 0
    assert torch.equal(ours[~nan].view(torch.int16), ref[~nan].view(torch.int16))
    back = np.array([precision.widen(b) for b in got[:64]], dtype=np.uint32).view(np.float32)
    assert np.array_equal(back, ours[:64].float().numpy(), equal_nan=True)
    # and inside a kernel that inlines it (a NaN gradient stays NaN, never inf or 0)
    g = torch.from_numpy(special.view(np.float32).copy()).reshape(1, -1)
    gl = torch.empty(g.shape, dtype=torch.bfloat16)
    precision.relu_grad_bias_low(g.numpy(), precision.u16(torch.ones(g.shape, dtype=torch.bfloat16)), torch.empty(g.shape[1]).numpy(),
                                precision.u16(gl))
    want = g.bfloat16()
    assert torch.equal(torch.isnan(gl), torch.isnan(want))
    assert torch.equal(gl[~torch.isnan(want)].view(torch.int16), want[~torch.isnan(want)].view(torch.int16))


def test_row_dot_float32_pass_and_the_fallback_for_other_dtypes():
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(300, 130, generator=g), torch.randn(130, generator=g)
    up = torch.randn(300, generator=g)
    xf, wf = _leaves(x, w)
    out = precision.row_dot(xf, wf)  # the numba pass
    (out * up).sum().backward()
    x64, w64 = _leaves(x.double(), w.double())
    (torch.mv(x64, w64) * up.double()).sum().backward()
    assert torch.allclose(out.double(), x.double() @ w.double(), rtol=1e-5, atol=1e-4)
    assert torch.allclose(xf.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(wf.grad.double(), w64.grad, rtol=1e-5, atol=1e-3)
    xb = x.bfloat16().requires_grad_()  # not float32: the plain formula, gradients included
    precision.row_dot(xb, wf).sum().backward()
    assert xb.grad is not None and xb.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("out_dim", [1, 3])
def test_fused_mlp_in_bf16_head_alone_and_an_input_without_gradient(out_dim):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 12, generator=g)
    raw = [torch.randn(out_dim, 12, generator=g), torch.randn(out_dim, generator=g)]
    up = torch.randn(40, out_dim, generator=g)
    xr, *pr = _leaves(x, *raw)
    ref = (xr * pr[0]).sum(1, keepdim=True) + pr[1] if out_dim == 1 else _bf16_mm(xr, pr[0].t()) + pr[1]
    (ref * up).sum().backward()
    xf, *pf = _leaves(x, *raw)
    with precision.bf16_matmuls():
        out = relu_mlp(xf, pf, last_linear=True)
    (out * up).sum().backward()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    for q, r in zip([xf, *pf], [xr, *pr], strict=True):
        assert torch.allclose(q.grad, r.grad, rtol=1e-4, atol=1e-4)
    # an input that needs no gradient (the first layer's ∂x is skipped): the weights' are unchanged
    deep = [torch.randn(8, 12, generator=g), torch.randn(8, generator=g), torch.randn(out_dim, 8, generator=g), raw[1]]
    p1, p2 = _leaves(*deep), _leaves(*deep)
    with precision.bf16_matmuls():
        (relu_mlp(x, p1, last_linear=True) * up).sum().backward()
        (relu_mlp(x.clone().requires_grad_(), p2, last_linear=True) * up).sum().backward()
    for a, b in zip(p1, p2, strict=True):
        assert torch.equal(a.grad, b.grad)


def test_overlapping_bf16_fits_restore_onednns_setting_after_the_last():
    from funnelrec.train.trainer import _matmul_precision

    mkl = getattr(torch.backends.mkldnn, "matmul", None)
    if mkl is None or not hasattr(mkl, "fp32_precision"):
        pytest.skip("this torch has no oneDNN fp32_precision setting")
    before = mkl.fp32_precision
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def fit_a():
        with _matmul_precision("bf16"):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def fit_b():
        a_in.wait(10)
        with _matmul_precision("bf16"):
            b_in.set()
            a_out.wait(10)
            seen["inside_b_after_a"] = mkl.fp32_precision  # A has left, B still fits

    ts = [threading.Thread(target=fit_a), threading.Thread(target=fit_b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    assert seen["inside_b_after_a"] == "bf16"
    assert mkl.fp32_precision == before
