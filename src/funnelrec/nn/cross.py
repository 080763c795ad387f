"""Explicit feature crossing on the flattened embedding x0 ∈ R^d (d = F·D).

`CrossNet` (DCN, Wang et al. 2017):  x_{l+1} = x0 · (x_lᵀ w_l) + b_l + x_l.
`CrossNetV2` (DCN-V2, Wang et al. 2021), full rank:  x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l;
    low-rank mixture of K experts (rank r):
    x_{l+1} = Σ_k g_k(x_l) · x0 ⊙ (U_k tanh(C_k tanh(V_kᵀ x_l)) + b_l) + x_l,  g = softmax(G x_l).
`GatedCrossNet` (GDCN, Wang et al. 2023): x_{l+1} = x0 ⊙ (W_l x_l + b_l) ⊙ σ(W^g_l x_l) + x_l.
All map (B, d) → (B, d).

`cross_v2_stack(x0, [W_1, b_1, …])`: the full-rank CrossNetV2 stack as one autograd node,
x_{l+1} = x_l + x0 ⊙ (x_l W_lᵀ + b_l) with one addmm + one addcmul per layer forward and, per
layer backward, g_z = g ⊙ x0, ∂x0 += g ⊙ z_l, ∂W_l = g_zᵀ x_l, ∂b_l = Σ g_z, g ← g + g_z W_l
(one addmm). Eager autograd runs ~2× the elementwise passes and allocations here (separate
mul/add nodes, their grads summed by the engine); same formulas, so the same numbers up to
float rounding. `CrossNetV2(fused=True)` uses it for the full-rank case. Inside
`nn.precision.bf16_matmuls()` (fit with `matmul_precision: bf16`) its GEMMs are native bf16;
the elementwise work stays fp32 (nn/precision.py, which holds those kernels).

    >>> import torch
    >>> x = torch.randn(4, 6)
    >>> [m(x).shape for m in (CrossNet(6, 2), CrossNetV2(6, 2), CrossNetV2(6, 2, rank=2, n_experts=3), GatedCrossNet(6, 2))]
    [torch.Size([4, 6]), torch.Size([4, 6]), torch.Size([4, 6]), torch.Size([4, 6])]
"""

from __future__ import annotations

import torch
from torch import nn

from funnelrec.nn import precision
from funnelrec.nn.activations import tanh_
from funnelrec.nn.precision import u16


class CrossNet(nn.Module):
    def __init__(self, dim: int, n_layers: int = 3) -> None:
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.randn(dim) * (1.0 / dim**0.5)) for _ in range(n_layers)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(dim)) for _ in range(n_layers)])

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (B, d) → (B, d)."""
        x = x0
        for w, b in zip(self.w, self.b):
            x = x0 * (x @ w).unsqueeze(-1) + b + x
        return x


class _CrossV2Stack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, *params):
        x, xs, zs = x0, [], []
        for i in range(0, len(params), 2):
            z = torch.addmm(params[i + 1], x, params[i].t())
            xs.append(x)
            zs.append(z)
            x = torch.addcmul(x, x0, z)
        ctx.save_for_backward(x0, *xs, *zs, *params[0::2])
        return x

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        n = (len(saved) - 1) // 3
        x0, xs, zs, ws = saved[0], saved[1 : n + 1], saved[n + 1 : 2 * n + 1], saved[2 * n + 1 :]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        gx0 = torch.zeros_like(x0)
        for i in reversed(range(n)):
            gz = g * x0
            gx0.addcmul_(g, zs[i])
            grads[2 * i] = gz.t().mm(xs[i])
            grads[2 * i + 1] = gz.sum(0)
            g = torch.addmm(g, gz, ws[i])  # ∂x_l = g + g_z W_l
        return (gx0.add_(g), *grads)  # x_0 is x0 itself: its "x" gradient joins the x0 one


def _forward16(x0: torch.Tensor, params, w: torch.Tensor | None = None, out: torch.Tensor | None = None):
    """The bf16 stack's forward: (x_L, [z_l], [bf16 W_l], [bf16 x_l]); with a head w, the last
    layer's pass also writes x_L · w into `out` and no bf16 copy of x_L."""
    n = len(params) // 2
    x, xl, lows, zs = x0, x0.bfloat16(), [], []
    wls = [p.bfloat16() for p in params[0::2]]  # once per step: the backward's GEMMs reuse them
    for i in range(n):
        zt = torch.mm(xl, wls[i].t())
        z, xn = torch.empty(zt.shape), torch.empty(zt.shape)
        lows.append(xl)
        zs.append(z)
        b = params[2 * i + 1].detach().numpy()
        if w is not None and i == n - 1:
            precision.cross_fwd16_dot(u16(zt), b, x0.numpy(), x.numpy(), w.detach().numpy(), z.numpy(), xn.numpy(),
                                      out.numpy())
        else:
            xl = torch.empty(zt.shape, dtype=torch.bfloat16)
            precision.cross_fwd16(u16(zt), b, x0.numpy(), x.numpy(), z.numpy(), xn.numpy(), u16(xl))
        x = xn
    return x, zs, wls, lows


class _CrossV2Stack16(torch.autograd.Function):
    """_CrossV2Stack with native bf16 GEMMs (nn.precision); the elementwise work in fp32."""

    @staticmethod
    def forward(ctx, x0, *params):
        x, zs, wls, lows = _forward16(x0, params)
        ctx.save_for_backward(x0, *zs, *wls, *lows)  # the bf16 copies too: saved-tensor hooks see them
        return x

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        n = (len(saved) - 1) // 3
        x0, zs, wls, lows = saved[0], saved[1 : n + 1], saved[n + 1 : 2 * n + 1], saved[2 * n + 1 :]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        gx0 = torch.zeros_like(x0)
        g = g.contiguous().clone()  # updated in place below; the engine's gradient is not ours
        for i in reversed(range(n)):
            db, gzl = torch.empty(g.shape[1]), torch.empty(g.shape, dtype=torch.bfloat16)
            precision.cross_bwd16(g.numpy(), x0.numpy(), zs[i].numpy(), gx0.numpy(), db.numpy(), u16(gzl))
            grads[2 * i] = torch.mm(gzl.t(), lows[i]).float()
            grads[2 * i + 1] = db
            precision.add_widen(g.numpy(), u16(torch.mm(gzl, wls[i])))  # ∂x_l = g + g_z W_l
        return (gx0.add_(g), *grads)


class _CrossV2Dot16(torch.autograd.Function):
    """x_L · w of _CrossV2Stack16 under a one-column head, as one node (nn.precision
    `cross_fwd16_dot` / `cross_bwd16_dot`): no (B, d) ∂x_L = ∂out ⊗ w is materialized, ∂x0 is
    not zero-filled first, and the first layer's ∂x_0 joins ∂x0 in the pass that forms it."""

    @staticmethod
    def forward(ctx, x0, w, *params):
        out = torch.empty(x0.shape[0])
        x, zs, wls, lows = _forward16(x0, params, w, out)
        ctx.save_for_backward(x0, w, x, *zs, *wls, *lows)
        return out

    @staticmethod
    def backward(ctx, go):
        x0, w, xL, *rest = ctx.saved_tensors
        n = len(rest) // 3
        zs, wls, lows = rest[:n], rest[n : 2 * n], rest[2 * n :]
        go = go.contiguous()
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        gx0, dw, g = torch.empty_like(x0), torch.empty_like(w), torch.empty_like(x0)
        gzl = torch.empty(x0.shape, dtype=torch.bfloat16)  # each layer's bf16 g_z: read by its two GEMMs only
        for i in reversed(range(n)):
            db = torch.empty(x0.shape[1])
            if i == n - 1:
                precision.cross_bwd16_dot(go.numpy(), w.detach().numpy(), x0.numpy(), zs[i].numpy(), xL.numpy(),
                                          gx0.numpy(), db.numpy(), dw.numpy(), u16(gzl))
            else:
                precision.cross_bwd16(g.numpy(), x0.numpy(), zs[i].numpy(), gx0.numpy(), db.numpy(), u16(gzl))
            grads[2 * i] = torch.mm(gzl.t(), lows[i]).float()
            grads[2 * i + 1] = db
            d = u16(torch.mm(gzl, wls[i]))  # g_z W_l
            if i == n - 1:
                precision.outer_add_widen(go.numpy(), w.detach().numpy(), d, g.numpy())  # ∂x_{L-1} = ∂out ⊗ w + g_z W
                if i == 0:
                    gx0.add_(g)
            elif i == 0:
                precision.add2_widen(gx0.numpy(), g.numpy(), d)  # ∂x0 += ∂x_0 = g + g_z W_0
            else:
                precision.add_widen(g.numpy(), d)
        return (gx0, dw, *grads)


def cross_v2_dot(x0: torch.Tensor, params: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """x0 (B, d), params as `cross_v2_stack`, w (d,) → (B,) = x_L · w: the stack under a one-column
    linear head (DCN-V2's parallel head on its cross half). In bf16 one fused node; otherwise the
    stack, then `precision.row_dot`."""
    if w.shape != (x0.shape[1],):
        raise ValueError(f"cross_v2_dot: w has shape {tuple(w.shape)}, the stack's width is {x0.shape[1]}")
    if precision.bf16_enabled() and params and w.is_contiguous():
        return _CrossV2Dot16.apply(x0.contiguous(), w, *params)
    return precision.row_dot(cross_v2_stack(x0, params), w)


def cross_v2_stack(x0: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """x0 (B, d); params [W_1 (d, d), b_1 (d,), …] → x_L of the full-rank DCN-V2 stack."""
    fn = _CrossV2Stack16 if precision.bf16_enabled() else _CrossV2Stack
    return fn.apply(x0.contiguous(), *params)


class CrossNetV2(nn.Module):
    def __init__(self, dim: int, n_layers: int = 3, rank: int = 0, n_experts: int = 1, fused: bool = False) -> None:
        super().__init__()
        self.rank, self.n_experts = rank, n_experts
        self.fused = fused and rank <= 0  # full rank only: one autograd node for the stack (cross_v2_stack)
        if rank <= 0:
            self.layers = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])
        else:
            K = n_experts
            self.V = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(torch.empty(K, dim, rank))) for _ in range(n_layers)])
            self.C = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(torch.empty(K, rank, rank))) for _ in range(n_layers)])
            self.U = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(torch.empty(K, rank, dim))) for _ in range(n_layers)])
            self.b = nn.ParameterList([nn.Parameter(torch.zeros(dim)) for _ in range(n_layers)])
            self.gates = nn.ModuleList([nn.Linear(dim, K, bias=False) for _ in range(n_layers)])

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (B, d) → (B, d)."""
        x = x0
        if self.rank <= 0:
            if getattr(self, "fused", False) and x0.dtype == torch.float32:
                return cross_v2_stack(x0, self._full_rank_params())
            for lin in self.layers:
                x = x0 * lin(x) + x
            return x
        if self.n_experts == 1:
            # one expert: its gate softmax is exactly 1, so the layer is three matmuls and a fused
            # x + x0 ⊙ (U h + b) — no einsum/softmax/sum (2.3 → ~0.8 ms for 300 × 360 on one core)
            if not torch.is_grad_enabled() and x0.dtype == torch.float32 and x0.device.type == "cpu":
                # scoring: the vectorized tanh (nn/activations.py), 464 → 270 µs for a request's
                # 300 × 110 on one core; torch.tanh was 6 × 26 µs of it
                x0 = x = x0.contiguous()
                for V, C, U, b in zip(self.V, self.C, self.U, self.b):
                    h = tanh_(torch.mm(tanh_(torch.mm(x, V[0])), C[0]))
                    x = torch.addcmul(x, x0, torch.addmm(b, h, U[0]))
                return x
            for V, C, U, b in zip(self.V, self.C, self.U, self.b):
                h = torch.tanh(torch.tanh(x @ V[0]) @ C[0])
                x = torch.addcmul(x, x0, torch.addmm(b, h, U[0]))
            return x
        for V, C, U, b, gate in zip(self.V, self.C, self.U, self.b, self.gates):
            h = torch.tanh(torch.einsum("bd,kdr->bkr", x, V))
            h = torch.tanh(torch.einsum("bkr,krs->bks", h, C))
            e = x0.unsqueeze(1) * (torch.einsum("bks,ksd->bkd", h, U) + b)  # (B, K, d)
            g = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # (B, K, 1)
            x = (g * e).sum(1) + x
        return x

    def _full_rank_params(self) -> list[torch.Tensor]:
        return [p for lin in self.layers for p in (lin.weight, lin.bias)]

    def dot(self, x0: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x0 (B, d), w (d,) → (B,) = forward(x0) · w; the full-rank fused stack in one node
        (`cross_v2_dot`)."""
        if self.rank <= 0 and getattr(self, "fused", False) and x0.dtype == torch.float32:
            return cross_v2_dot(x0, self._full_rank_params(), w)
        return precision.row_dot(self(x0), w)


class GatedCrossNet(nn.Module):
    def __init__(self, dim: int, n_layers: int = 3) -> None:
        super().__init__()
        self.w = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])
        self.g = nn.ModuleList([nn.Linear(dim, dim, bias=False) for _ in range(n_layers)])

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (B, d) → (B, d)."""
        x = x0
        for w, g in zip(self.w, self.g):
            x = x0 * w(x) * torch.sigmoid(g(x)) + x
        return x
