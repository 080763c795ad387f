"""A ReLU MLP's forward and backward with the elementwise work fused into one pass per layer
(numba kernels; the matmuls stay torch's / MKL's):

    forward   a_l = h_{l-1} W_lᵀ (mm, no bias);  h_l = max(a_l + b_l, 0)      one pass, in place
    backward  g_l ← g_l · [h_l > 0],  ∂b_l = Σ_batch g_l                       one pass, in place
              ∂W_l = g_lᵀ h_{l-1},  g_{l-1} = g_l W_l                          (mm)
    (the last layer, if `out_dim`, is linear: a = h W_oᵀ + b_o)

Eager torch spends four passes over each (B, H) activation here (bias broadcast copy, ReLU,
threshold_backward, bias-gradient sum), each into fresh memory. Same formulas as nn.MLP with
ReLU, no dropout and no batch norm; float32 CPU only (callers check `can_fuse_mlp`). The
kernels are compiled at import (explicit signatures, cached on disk by numba). Inside
`nn.precision.bf16_matmuls()` (fit with `matmul_precision: bf16`) the GEMMs are native bf16
and a one-column linear head is an fp32 elementwise product (nn/precision.py).

    >>> import torch
    >>> ws = [torch.ones(3, 2), torch.zeros(3), torch.ones(1, 3), torch.zeros(1)]
    >>> relu_mlp(torch.tensor([[1., -2.]]), ws, last_linear=True).tolist()   # relu(-1)·3 = 0
    [[0.0]]
"""

from __future__ import annotations

import numba
import torch

from funnelrec.nn import precision


@numba.njit("void(f4[:, ::1], f4[::1])", cache=True, nogil=True)
def _bias_relu(a, b):  # pragma: no cover - compiled
    n, h = a.shape
    for i in range(n):
        for j in range(h):
            x = a[i, j] + b[j]
            a[i, j] = x if x > 0 else 0.0


@numba.njit("void(f4[:, ::1], f4[:, ::1], f4[::1])", cache=True, nogil=True)
def _relu_grad_bias(g, h, db):  # pragma: no cover - compiled
    n, m = g.shape
    db[:] = 0.0
    for i in range(n):
        for j in range(m):
            x = g[i, j] if h[i, j] > 0 else 0.0
            g[i, j] = x
            db[j] += x


class _ReluMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, last_linear, *params):
        bf16 = precision.bf16_enabled()  # native bf16 GEMMs (nn.precision), fixed for this node's backward
        hs, lows = [x], []  # lows[i]: layer i's input as its GEMM operand (bf16 copy, or hs[i] itself)
        h = x
        n_layers = len(params) // 2
        for i in range(n_layers):
            w, b = params[2 * i], params[2 * i + 1]
            if last_linear and i == n_layers - 1:
                lows.append(h)
                if bf16 and w.shape[0] == 1:
                    h = (h * w).sum(1, keepdim=True).add_(b)  # a GEMV: fp32, elementwise (nn.precision)
                elif bf16:
                    h = precision.mm(h, w.t(), True).add_(b)
                else:
                    h = torch.addmm(b, h, w.t())
            else:
                hl = precision.low(h, bf16)
                lows.append(hl)
                h = precision.mm(hl, w.t(), bf16)
                _bias_relu(h.numpy(), b.detach().numpy())
            hs.append(h)
        ctx.last_linear, ctx.bf16, ctx.lows = last_linear, bf16, lows
        ctx.save_for_backward(*hs, *params)
        return h

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        n_layers = (len(saved) - 1) // 3
        hs, params = saved[: n_layers + 1], saved[n_layers + 1 :]  # hs[i + 1] = output of layer i
        bf16, lows = ctx.bf16, ctx.lows
        grads: list[torch.Tensor | None] = [None] * (2 * n_layers)
        g = g.contiguous()
        for i in reversed(range(n_layers)):
            w = params[2 * i]
            if ctx.last_linear and i == n_layers - 1:
                db = g.sum(0)
                if bf16 and w.shape[0] == 1:  # the fp32 head of the forward
                    grads[2 * i], grads[2 * i + 1] = (g[:, 0] @ hs[i]).unsqueeze(0), db
                    g = g * w  # a new (B, H) tensor: the layer below may mask it in place
                    continue
            else:
                if i == n_layers - 1:
                    g = g.clone()  # the engine's gradient is not ours to modify in place
                db = torch.empty(g.shape[1])
                # g is the gradient w.r.t. h_i = relu(·): mask it by h_i > 0 and sum it for ∂b
                _relu_grad_bias(g.numpy(), hs[i + 1].numpy(), db.numpy())
            gl = precision.low(g, bf16)
            grads[2 * i] = precision.mm(gl.t(), lows[i] if bf16 else hs[i], bf16)
            grads[2 * i + 1] = db
            g = precision.mm(gl, w, bf16) if (i > 0 or ctx.needs_input_grad[0]) else None
        return (g, None, *grads)


def relu_mlp(x: torch.Tensor, params: list[torch.Tensor], last_linear: bool) -> torch.Tensor:
    """x (B, in) float32; params [W_1, b_1, …] (W_l (out, in)) → (B, out of the last layer);
    every layer ReLU except the last when `last_linear`."""
    return _ReluMLP.apply(x.contiguous(), last_linear, *params)


def can_fuse_mlp(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu"
