"""Lazy (row-sparse) Adam for embedding tables with sparse COO gradients.

The update of `torch.optim.SparseAdam` (TF's LazyAdam; TorchRec's row-wise fused optimizers do
the same on GPU): for the rows r the batch touched, with g_r their summed gradient and t the
table's step count,
    m_r ← β1·m_r + (1 − β1)·g_r          v_r ← β2·v_r + (1 − β2)·g_r²
    w_r ← w_r − lr · √(1 − β2ᵗ)/(1 − β1ᵗ) · m_r / (√v_r + ε)
and nothing else: untouched rows, and their moments, stay as they are.

Same numbers as SparseAdam in about half the passes over the touched rows: gather m_r, v_r
once, update them in place, scatter them back and add the step with one `index_add_`;
SparseAdam masks and re-scatters through sparse tensors (~25 ops). Gradients whose row indices
are already strictly increasing (two_tower's bag backward) skip the coalesce sort.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(4, 2))
    >>> opt = RowSparseAdam([w], lr=0.1)
    >>> w.grad = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.tensor([[1.0, -1.0]]), (4, 2))
    >>> opt.step()  # first step: lr · sign(g) on row 2
    >>> [round(x, 4) for x in w.detach()[2].tolist()], bool((w.detach()[[0, 1, 3]] == 0).all())
    ([-0.1, 0.1], True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from funnelrec.core.errors import ConfigError, DataError


class RowSparseAdam(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ConfigError(f"RowSparseAdam needs lr > 0, eps > 0, 0 ≤ β < 1; got {lr}, {eps}, {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse or grad.sparse_dim() != 1:
                    raise DataError("RowSparseAdam needs row-sparse COO gradients (nn.Embedding(sparse=True))")
                rows, values = grad._indices()[0], grad._values()
                if rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all()):
                    grad = grad.coalesce()  # repeated rows: sum them
                    rows, values = grad._indices()[0], grad._values()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                if rows.numel() == 0:
                    continue
                m = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - b1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(values, values, value=1 - b2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.index_add_(0, rows, m.div_(v.sqrt_().add_(eps)), alpha=-step_size)
        return loss
