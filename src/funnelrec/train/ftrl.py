"""FTRL-Proximal (McMahan et al. 2013, "Ad Click Prediction: a View from the Trenches") as a
torch optimizer — per-coordinate learning rates and L1 sparsity for wide/linear parts.

Per coordinate i, with gradient g:
    σ = (√(n + g²) − √n) / α;   z ← z + g − σ·w;   n ← n + g²
    w = 0                                             if |z| ≤ λ1
    w = −(z − sign(z)·λ1) / ((β + √n)/α + λ2)         otherwise

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = FTRL([w], alpha=0.5, beta=1.0)
    >>> w.grad = torch.tensor([1.0, -2.0]); opt.step()
    >>> [round(v, 4) for v in w.tolist()]   # −g/((1 + |g|)/0.5)
    [-0.25, 0.3333]
"""

from __future__ import annotations

import torch

from funnelrec.core.errors import ConfigError


class FTRL(torch.optim.Optimizer):
    def __init__(self, params, alpha: float = 0.05, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0) -> None:
        if alpha <= 0 or beta < 0 or l1 < 0 or l2 < 0:
            raise ConfigError(f"FTRL needs alpha > 0 and beta, l1, l2 ≥ 0; got {alpha}, {beta}, {l1}, {l2}")
        super().__init__(params, {"alpha": alpha, "beta": beta, "l1": l1, "l2": l2})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            a, b, l1, l2 = group["alpha"], group["beta"], group["l1"], group["l2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    g = g.to_dense()
                st = self.state[p]
                if not st:
                    st["z"] = torch.zeros_like(p)
                    st["n"] = torch.zeros_like(p)
                z, n = st["z"], st["n"]
                n_new = n + g * g
                sigma = (n_new.sqrt() - n.sqrt()) / a
                z.add_(g - sigma * p)
                n.copy_(n_new)
                w = -(z - torch.sign(z) * l1) / ((b + n.sqrt()) / a + l2)
                p.copy_(torch.where(z.abs() <= l1, torch.zeros_like(w), w))
        return loss
