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
and a one-column linear head is an fp32 row dot (nn/precision.py, which holds those kernels);
there a hidden layer is kept in fp32 only where fp32 is read (under that head, or as the
output), else as its bf16 copy alone, which is also its ReLU mask. `grad_cols` (raw features
after the embeddings) narrows the first layer's input-gradient GEMM to the columns that need it.

    >>> import torch
    >>> ws = [torch.ones(3, 2), torch.zeros(3), torch.ones(1, 3), torch.zeros(1)]
    >>> relu_mlp(torch.tensor([[1., -2.]]), ws, last_linear=True).tolist()   # relu(-1)·3 = 0
    [[0.0]]
"""

from __future__ import annotations

import numba
import torch

from funnelrec.nn import precision
from funnelrec.nn.precision import u16


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


class _ReluMLP16(torch.autograd.Function):
    """_ReluMLP with native bf16 GEMMs (nn.precision); the elementwise work in fp32.

    A hidden layer's output is kept in fp32 only where fp32 is read: the last hidden layer under
    a one-column (fp32 GEMV) head, or the network's output when it ends in a ReLU layer. The
    others exist as their bf16 copy, which is the next GEMM's operand and the ReLU mask."""

    @staticmethod
    def forward(ctx, x, last_linear, grad_cols, *params):
        n_layers = len(params) // 2
        gemv_head = last_linear and params[-2].shape[0] == 1
        lows, wls, masks = [], [], []  # lows[i]: layer i's input, wls[i]: W_i, masks[i]: layer i's output, in bf16
        h, hl, h32 = x, x.bfloat16(), x  # h32: the fp32 output of the last hidden layer, where it is needed
        for i in range(n_layers):
            w, b = params[2 * i], params[2 * i + 1]
            wl = w.bfloat16()  # once per step: the backward's GEMM reuses it
            lows.append(hl)
            wls.append(wl)
            if last_linear and i == n_layers - 1:
                if gemv_head:  # a GEMV: fp32 (nn.precision), one pass
                    out = torch.empty(h.shape[0])
                    precision.rowdot(h.numpy(), w.detach()[0].numpy(), out.numpy())
                    h = out.unsqueeze(1).add_(b)
                else:
                    h = torch.mm(hl, wl.t()).float().add_(b)
            else:
                z = torch.mm(hl, wl.t())
                hl = torch.empty(z.shape, dtype=torch.bfloat16)
                if i == n_layers - 1 or (i == n_layers - 2 and gemv_head):
                    h = h32 = torch.empty(z.shape)
                    precision.widen_bias_relu_low(u16(z), b.detach().numpy(), h.numpy(), u16(hl))
                else:
                    precision.widen_bias_relu_to_low(u16(z), b.detach().numpy(), u16(hl))
                    h = None
                masks.append(hl)
        ctx.last_linear, ctx.grad_cols = last_linear, grad_cols
        ctx.save_for_backward(x, h32, *params, *lows, *wls, *masks)  # the bf16 copies too: saved-tensor hooks see them
        return h

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        n_layers = n = (len(saved) - 2 + (1 if ctx.last_linear else 0)) // 5  # 2n params, n lows, n weights, n − last_linear masks
        x, h32 = saved[0], saved[1]
        params, lows, wls, masks = saved[2 : 2 * n + 2], saved[2 * n + 2 : 3 * n + 2], saved[3 * n + 2 : 4 * n + 2], saved[4 * n + 2 :]
        grads: list[torch.Tensor | None] = [None] * (2 * n_layers)
        # the gradient: fp32 `g`, or `gb` (the bf16 output of a GEMM), or `outer` = (g, w) of a
        # one-column head, g_i w_j, never materialized
        g, gb, outer = g.contiguous(), None, None
        for i in reversed(range(n_layers)):
            w = params[2 * i]
            if ctx.last_linear and i == n_layers - 1:
                grads[2 * i + 1] = g.sum(0)
                if w.shape[0] == 1:  # the fp32 head of the forward: its weight gradient comes with the layer below
                    outer = (g[:, 0].contiguous(), w.detach()[0])
                    continue
                gl = g.bfloat16()
            else:
                db, gl = torch.empty(params[2 * i].shape[0]), torch.empty(masks[i].shape, dtype=torch.bfloat16)
                if outer is not None:
                    dw = torch.empty(1, h32.shape[1])
                    precision.relu_grad_bias_low_outer(outer[0].numpy(), outer[1].numpy(), h32.numpy(), db.numpy(),
                                                       u16(gl), dw[0].numpy())
                    grads[2 * i + 2] = dw
                    outer = None
                elif gb is None:
                    precision.relu_grad_bias_low(g.numpy(), u16(masks[i]), db.numpy(), u16(gl))
                else:
                    precision.relu_grad_bias_low16(u16(gb), u16(masks[i]), db.numpy(), u16(gl))
                grads[2 * i + 1] = db
            grads[2 * i] = torch.mm(gl.t(), lows[i]).float()
            if i == 0 and ctx.grad_cols is not None and ctx.needs_input_grad[0]:
                # only the first grad_cols input columns' gradient is wanted: a narrower GEMM,
                # widened into the input's shape with the other columns zero
                gx = torch.empty(x.shape)
                precision.widen_cols(u16(torch.mm(gl, wls[0][:, : ctx.grad_cols])), gx.numpy())
                return (gx, None, None, *grads)
            gb = torch.mm(gl, wls[i]) if (i > 0 or ctx.needs_input_grad[0]) else None
        if outer is not None:  # a head alone, no hidden layer
            grads[0] = (outer[0] @ x).unsqueeze(0)
            gx = torch.outer(*outer) if ctx.needs_input_grad[0] else None
            if gx is not None and ctx.grad_cols is not None:
                gx[:, ctx.grad_cols :] = 0.0  # as promised: the unwanted columns are zero
            return (gx, None, None, *grads)
        return (None if gb is None else gb.float(), None, None, *grads)


class _ReluMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, last_linear, grad_cols, *params):
        hs = [x]
        h = x
        n_layers = len(params) // 2
        for i in range(n_layers):
            w, b = params[2 * i], params[2 * i + 1]
            if last_linear and i == n_layers - 1:
                h = torch.addmm(b, h, w.t())
            else:
                h = torch.mm(h, w.t())
                _bias_relu(h.numpy(), b.detach().numpy())
            hs.append(h)
        ctx.last_linear, ctx.grad_cols = last_linear, grad_cols
        ctx.save_for_backward(*hs, *params)
        return h

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        n_layers = (len(saved) - 1) // 3
        hs, params = saved[: n_layers + 1], saved[n_layers + 1 :]  # hs[i + 1] = output of layer i
        grads: list[torch.Tensor | None] = [None] * (2 * n_layers)
        g = g.contiguous()
        for i in reversed(range(n_layers)):
            w = params[2 * i]
            if ctx.last_linear and i == n_layers - 1:
                db = g.sum(0)
            else:
                if i == n_layers - 1:
                    g = g.clone()  # the engine's gradient is not ours to modify in place
                db = torch.empty(g.shape[1])
                # g is the gradient w.r.t. h_i = relu(·): mask it by h_i > 0 and sum it for ∂b
                _relu_grad_bias(g.numpy(), hs[i + 1].numpy(), db.numpy())
            grads[2 * i] = g.t().mm(hs[i])
            grads[2 * i + 1] = db
            if i == 0 and ctx.grad_cols is not None and ctx.needs_input_grad[0]:
                gx = hs[0].new_zeros(hs[0].shape)
                gx[:, : ctx.grad_cols] = g.mm(w[:, : ctx.grad_cols])
                return (gx, None, None, *grads)
            g = g.mm(w) if (i > 0 or ctx.needs_input_grad[0]) else None
        return (g, None, None, *grads)


def relu_mlp(x: torch.Tensor, params: list[torch.Tensor], last_linear: bool,
             grad_cols: int | None = None) -> torch.Tensor:
    """x (B, in) float32; params [W_1, b_1, …] (W_l (out, in)) → (B, out of the last layer);
    every layer ReLU except the last when `last_linear`. `grad_cols`: only x[:, :grad_cols]
    needs a gradient (the rest are raw features); the input gradient's other columns are left
    zero and the first layer's input-gradient GEMM is that much narrower."""
    fn = _ReluMLP16 if precision.bf16_enabled() else _ReluMLP
    if grad_cols is not None and not 0 < grad_cols <= x.shape[1]:
        raise ValueError(f"grad_cols {grad_cols} outside (0, {x.shape[1]}]")
    return fn.apply(x.contiguous(), last_linear, grad_cols, *params)


def can_fuse_mlp(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu"
