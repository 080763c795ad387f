"""bf16 GEMMs for the fused training kernels (nn.fused_mlp, nn.cross `cross_v2_stack`).

Inside `bf16_matmuls()` (the Trainer enters it for `matmul_precision: bf16`), those kernels run
each of their big matrix products as a native bf16 GEMM: both operands are rounded to bf16, the
product accumulates in fp32 (oneDNN) and its result is stored in bf16, then widened to fp32 for
the elementwise work (bias, ReLU, the cross layer's x0 ⊙ z + x), which stays fp32. That is
the mixed precision of `torch.autocast(dtype=torch.bfloat16)`, applied to these GEMMs alone.

Why not only oneDNN's `fp32_precision = "bf16"` (which the Trainer also sets, for every other
matmul): that keeps fp32 inputs and outputs and converts inside the GEMM, and where the CPU has
no AMX it is no faster than fp32. Measured on this project's 2-core AMD EPYC (AVX512-BF16, no
AMX), batch 2048: a 2048×128 · 128×128 product takes 688 µs in fp32, 618 µs under
`fp32_precision = "bf16"` and 322 µs as a native bf16 GEMM (+29 µs per operand conversion);
on Intel AMX the native GEMM is also the faster one (it skips the in-GEMM conversions).
Products with one output column (a linear head) are left in fp32 elementwise form: a GEMV is
memory-bound, so bf16 saves nothing there and oneDNN's bf16 setting makes it ~3× slower.

The switch is per thread (a learner thread's fit does not change the fused kernels of a serving
thread), and each autograd node reads it at forward time, so its backward uses the forward's
precision. oneDNN's `fp32_precision`, which the Trainer sets beside it, is process-wide: while a
fit runs, other threads' plain fp32 matmuls run under it too (train/trainer.py
`_matmul_precision` counts the fits that hold it and restores it after the last).

    >>> import torch
    >>> from funnelrec.nn.fused_mlp import relu_mlp
    >>> x, head = torch.tensor([[1.0 + 2**-10]]), [torch.ones(1, 1), torch.zeros(1), torch.ones(1, 1), torch.zeros(1)]
    >>> float(relu_mlp(x, head, last_linear=True)) == 1.0 + 2**-10     # outside: fp32
    True
    >>> with bf16_matmuls():                                           # inside: the GEMM's operand
    ...     float(relu_mlp(x, head, last_linear=True))                 # 1 + 2⁻¹⁰ rounds to 1 in bf16
    1.0
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numba
import numpy as np
import torch

_local = threading.local()


def bf16_enabled() -> bool:
    """Whether this thread is inside `bf16_matmuls()`."""
    return getattr(_local, "bf16", False)


@contextlib.contextmanager
def bf16_matmuls(enabled: bool = True) -> Iterator[None]:
    """Run the fused kernels' GEMMs in bf16 on this thread for the block (module doc)."""
    old = bf16_enabled()
    _local.bf16 = enabled
    try:
        yield
    finally:
        _local.bf16 = old


def u16(t: torch.Tensor) -> np.ndarray:
    """A contiguous bf16 tensor's bits as a uint16 numpy array (no copy), for the numba kernels
    that widen and round bf16 inside their own pass (`widen`, `round_bf16`)."""
    return t.view(torch.int16).numpy().view(np.uint16)


@numba.njit("u2(u4)", cache=True, nogil=True, inline="always")
def round_bf16(bits):  # pragma: no cover - compiled
    """fp32 bits → the bf16 bits nearest, ties to even, as torch rounds; a NaN stays a (quiet)
    NaN — rounding its payload could carry it into the exponent (inf) or the sign."""
    if (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((bits >> np.uint32(16)) | np.uint32(0x0040))
    return np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@numba.njit("u4(u2)", cache=True, nogil=True, inline="always")
def widen(bits):  # pragma: no cover - compiled
    """bf16 bits → the same value's fp32 bits (exact)."""
    return np.uint32(bits) << np.uint32(16)


@numba.njit("void(f4[:, ::1], f4[::1], f4[::1])", cache=True, nogil=True, fastmath={"reassoc", "contract"})
def rowdot(x, w, out):  # pragma: no cover - compiled
    """out[i] = Σ_j x[i, j] w[j]: one read of x, no (B, H) temporary (the sum reassociated, so
    that it vectorizes: 4× faster than the strict order here)."""
    n, m = x.shape
    for i in range(n):
        acc = np.float32(0.0)
        for j in range(m):
            acc += x[i, j] * w[j]
        out[i] = acc


class _RowDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        out = torch.empty(x.shape[0], dtype=torch.float32)
        rowdot(x.numpy(), w.numpy(), out.numpy())
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = torch.outer(g, w) if ctx.needs_input_grad[0] else None
        return gx, (g @ x if ctx.needs_input_grad[1] else None)


def row_dot(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (B, H) · w (H,) → (B,), a linear head's GEMV written so that neither pass is a
    matrix-vector product (`mv`, and `mv` over a transposed view in its backward): under oneDNN's
    bf16 setting those run 3–4× slower than fp32 (`mv(x, w)` 104 µs against 33 µs, `mv(xᵀ, g)`
    137 µs against 32 µs, at 2048 × 142 here), while `g @ x` and `outer(g, w)` stay fast.
    float32 contiguous CPU operands take the numba pass; anything else is `(x * w).sum(1)`."""
    fast = all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in (x, w))
    return _RowDot.apply(x, w) if fast else (x * w).sum(1)


# The fused kernels' bf16 passes. They live in this file, beside `round_bf16` and `widen` which
# they inline: numba's on-disk cache is invalidated by a change to the cached function's own
# file only, so a kernel in another file kept a stale copy of a changed helper.

@numba.njit(cache=True, nogil=True, inline="always")
def _round_row(src, dst, i):  # pragma: no cover - compiled
    """dst[i, :] = the bf16 bits of the fp32 bits src[:] (a row computed in a scratch buffer)."""
    for j in range(src.shape[0]):
        dst[i, j] = round_bf16(src[j])


@numba.njit(cache=True, nogil=True, inline="always")
def _widen_row(src, i, dst):  # pragma: no cover - compiled
    """dst[:] = the fp32 bits of the bf16 bits src[i, :]."""
    for j in range(dst.shape[0]):
        dst[j] = widen(src[i, j])


# The fused MLP's (nn/fused_mlp.py `_ReluMLP16`): the GEMM output arrives in bf16 bits; one pass widens it, adds the
# bias, applies ReLU and writes the fp32 activation where one is read (the fp32 head's input,
# the network's output) and its bf16 copy (the next GEMM's operand and the ReLU mask). Backward: one pass masks the gradient, sums ∂b and writes the
# bf16 operand of the two GEMMs. torch's separate conversions took 105–112 µs each at 2048 × 256.
@numba.njit("void(u2[:, ::1], f4[::1], f4[:, ::1], u2[:, ::1])", cache=True, nogil=True)
def widen_bias_relu_low(z, b, h, hl):  # pragma: no cover - compiled
    n, m = z.shape
    hu = h.view(np.uint32)
    for i in range(n):
        for j in range(m):
            hu[i, j] = widen(z[i, j])
        for j in range(m):
            x = h[i, j] + b[j]
            h[i, j] = x if x > 0 else np.float32(0.0)
        for j in range(m):
            hl[i, j] = round_bf16(hu[i, j])


@numba.njit("void(u2[:, ::1], f4[::1], u2[:, ::1])", cache=True, nogil=True)
def widen_bias_relu_to_low(z, b, hl):  # pragma: no cover - compiled
    """widen_bias_relu_low without the fp32 activation: a hidden layer whose output only feeds
    the next bf16 GEMM (its bf16 copy is also the backward's ReLU mask)."""
    n, m = z.shape
    row = np.empty(m, dtype=np.float32)
    ru = row.view(np.uint32)
    for i in range(n):
        _widen_row(z, i, ru)
        for j in range(m):
            x = row[j] + b[j]
            row[j] = x if x > 0 else np.float32(0.0)
        _round_row(ru, hl, i)


# The backward's ReLU mask is the layer output's bf16 copy (`mask`, bits): a ReLU output is
# +0 or positive, and a positive fp32 stays nonzero in bf16 (same exponent range; only values
# under ~5e-41 round to 0, whose gradient is then dropped).
@numba.njit("void(f4[:, ::1], u2[:, ::1], f4[::1], u2[:, ::1])", cache=True, nogil=True)
def relu_grad_bias_low(g, mask, db, gl):  # pragma: no cover - compiled
    n, m = g.shape
    db[:] = 0.0
    gu = g.view(np.uint32)
    for i in range(n):
        for j in range(m):
            if mask[i, j] != 0:
                db[j] += g[i, j]
                gl[i, j] = round_bf16(gu[i, j])
            else:
                gl[i, j] = 0


@numba.njit("void(u2[:, ::1], u2[:, ::1], f4[::1], u2[:, ::1])", cache=True, nogil=True)
def relu_grad_bias_low16(g, mask, db, gl):  # pragma: no cover - compiled
    n, m = g.shape
    db[:] = 0.0
    w = np.empty(m, dtype=np.uint32)
    wf = w.view(np.float32)
    for i in range(n):
        _widen_row(g, i, w)
        for j in range(m):
            if mask[i, j] != 0:
                db[j] += wf[j]
                gl[i, j] = g[i, j]  # already bf16: masking is a copy
            else:
                gl[i, j] = 0


@numba.njit("void(f4[::1], f4[::1], f4[:, ::1], f4[::1], u2[:, ::1], f4[::1])", cache=True, nogil=True,
            fastmath={"reassoc", "contract"})
def relu_grad_bias_low_outer(g, w, h, db, gl, dw):  # pragma: no cover - compiled
    """The layer under a one-column head: its gradient g_i w_j, masked, summed, rounded, in
    one pass without materializing the (B, H) outer product; in the same pass over h the
    head's own weight gradient dw_j = Σ_i g_i h_ij."""
    n, m = h.shape
    db[:] = 0.0
    dw[:] = 0.0
    row = np.empty(m, dtype=np.float32)
    ru = row.view(np.uint32)
    for i in range(n):
        gi = g[i]
        for j in range(m):
            hij = h[i, j]
            dw[j] += gi * hij
            x = gi * w[j] if hij > 0 else np.float32(0.0)
            db[j] += x
            row[j] = x
        _round_row(ru, gl, i)


# The DCN-V2 cross stack's (nn/cross.py `_CrossV2Stack16`): per layer forward one pass over the bf16 GEMM output z̃ = x̃_l W̃_lᵀ:
# z = z̃ + b (fp32, kept for ∂x0), x_{l+1} = x_l + x0 ⊙ z, and x̃_{l+1} (the next GEMM's bf16
# operand); backward one pass: g_z = g ⊙ x0, ∂x0 += g ⊙ z, ∂b = Σ g_z, g̃_z; then g += g̃_z W̃_l.
@numba.njit("void(u2[:, ::1], f4[::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], u2[:, ::1])",
            cache=True, nogil=True)
def cross_fwd16(zt, b, x0, x, z, xn, xnl):  # pragma: no cover - compiled
    n, m = zt.shape
    zu, xu = z.view(np.uint32), xn.view(np.uint32)
    for i in range(n):
        for j in range(m):
            zu[i, j] = widen(zt[i, j])
        for j in range(m):
            v = z[i, j] + b[j]
            z[i, j] = v
            xn[i, j] = x[i, j] + x0[i, j] * v
        for j in range(m):
            xnl[i, j] = round_bf16(xu[i, j])


@numba.njit("void(f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[::1], u2[:, ::1])", cache=True, nogil=True)
def cross_bwd16(g, x0, z, gx0, db, gzl):  # pragma: no cover - compiled
    n, m = g.shape
    db[:] = 0.0
    row = np.empty(m, dtype=np.float32)
    ru = row.view(np.uint32)
    for i in range(n):
        for j in range(m):
            gz = g[i, j] * x0[i, j]
            gx0[i, j] += g[i, j] * z[i, j]
            db[j] += gz
            row[j] = gz
        _round_row(ru, gzl, i)


# The cross stack under DCN-V2's one-column head (nn.cross `cross_v2_dot`): the last layer's pass
# also takes the head's dot product x_L · w and writes no bf16 copy of x_L (no GEMM reads it);
# backward, its gradient g_L = ∂out ⊗ w is formed inside the passes that read it, so the (B, d)
# outer product, its copy, the zero-filled ∂x0 and the head's separate GEMV are gone.
@numba.njit("void(u2[:, ::1], f4[::1], f4[:, ::1], f4[:, ::1], f4[::1], f4[:, ::1], f4[:, ::1], f4[::1])",
            cache=True, nogil=True, fastmath={"reassoc", "contract"})
def cross_fwd16_dot(zt, b, x0, x, w, z, xn, out):  # pragma: no cover - compiled
    n, m = zt.shape
    zu = z.view(np.uint32)
    for i in range(n):
        for j in range(m):
            zu[i, j] = widen(zt[i, j])
        acc = np.float32(0.0)
        for j in range(m):
            v = z[i, j] + b[j]
            z[i, j] = v
            xv = x[i, j] + x0[i, j] * v
            xn[i, j] = xv
            acc += xv * w[j]
        out[i] = acc


@numba.njit("void(f4[::1], f4[::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[::1], f4[::1], u2[:, ::1])",
            cache=True, nogil=True)
def cross_bwd16_dot(go, w, x0, z, xl, gx0, db, dw, gzl):  # pragma: no cover - compiled
    """cross_bwd16 of the last layer with g = go ⊗ w: ∂x0 written (not accumulated), and the
    head's ∂w = Σ_i go_i x_L[i] in the same pass."""
    n, m = x0.shape
    db[:] = 0.0
    dw[:] = 0.0
    row = np.empty(m, dtype=np.float32)
    ru = row.view(np.uint32)
    for i in range(n):
        gi = go[i]
        for j in range(m):
            g = gi * w[j]
            gz = g * x0[i, j]
            gx0[i, j] = g * z[i, j]
            db[j] += gz
            dw[j] += gi * xl[i, j]
            row[j] = gz
        _round_row(ru, gzl, i)


@numba.njit("void(f4[::1], f4[::1], u2[:, ::1], f4[:, ::1])", cache=True, nogil=True)
def outer_add_widen(go, w, d, g):  # pragma: no cover - compiled
    """g = go ⊗ w + the fp32 values of the bf16 bits d (∂x_{L-1} = g_L + g_z W)."""
    n, m = d.shape
    t = np.empty(m, dtype=np.uint32)
    tf = t.view(np.float32)
    for i in range(n):
        _widen_row(d, i, t)
        gi = go[i]
        for j in range(m):
            g[i, j] = gi * w[j] + tf[j]


@numba.njit("void(f4[:, ::1], f4[:, ::1], u2[:, ::1])", cache=True, nogil=True)
def add2_widen(gx0, g, d):  # pragma: no cover - compiled
    """gx0 += g + the fp32 values of d: the first layer's ∂x_0 joins ∂x0 in the pass that forms it."""
    n, m = g.shape
    t = np.empty(m, dtype=np.uint32)
    tf = t.view(np.float32)
    for i in range(n):
        _widen_row(d, i, t)
        for j in range(m):
            gx0[i, j] += g[i, j] + tf[j]


@numba.njit("void(f4[:, ::1], u2[:, ::1])", cache=True, nogil=True)
def add_widen(g, d):  # pragma: no cover - compiled
    n, m = g.shape
    w = np.empty(m, dtype=np.uint32)
    wf = w.view(np.float32)
    for i in range(n):
        _widen_row(d, i, w)
        for j in range(m):
            g[i, j] += wf[j]


@numba.njit("void(u2[:, ::1], f4[:, ::1])", cache=True, nogil=True)
def widen_cols(src, dst):  # pragma: no cover - compiled
    """dst[:, :m] = the fp32 values of the bf16 bits src (B, m); dst[:, m:] = 0 (nn.fused_mlp's
    input gradient when only its first m columns are wanted)."""
    n, m = src.shape
    du = dst.view(np.uint32)
    for i in range(n):
        for j in range(m):
            du[i, j] = widen(src[i, j])
        for j in range(m, dst.shape[1]):
            dst[i, j] = 0.0
