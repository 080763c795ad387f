"""Multi-layer perceptron: h_{l+1} = Dropout(act(BN?(W_l h_l + b_l))); optional final linear.
`fused=True` (ReLU, no dropout/BN, float32 CPU): the same network through nn.fused_mlp.

    >>> import torch
    >>> MLP(8, (16, 4))(torch.zeros(2, 8)).shape
    torch.Size([2, 4])
    >>> MLP(8, (16,), out_dim=1)(torch.zeros(2, 8)).shape
    torch.Size([2, 1])
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.0,
                 batch_norm: bool = False, out_dim: int | None = None, activation: str = "relu",
                 fused: bool = False) -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}[activation]
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            # in place: its input is the fresh Linear/BN output no other node reads
            layers.append(nn.ReLU(inplace=True) if act is nn.ReLU else act())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d
        # fused: ReLU layers without dropout/BN run through nn.fused_mlp (one pass per layer for
        # bias + ReLU and for its backward) on float32 CPU inputs; same parameters and formulas
        self.fused = fused and activation == "relu" and dropout == 0 and not batch_norm and bool(hidden)
        self._last_linear = out_dim is not None
        if self.fused:
            from funnelrec.nn import fused_mlp

            self._relu_mlp, self._can_fuse = fused_mlp.relu_mlp, fused_mlp.can_fuse_mlp

    def linear_params(self) -> list[torch.Tensor]:
        """[W_1, b_1, …] of the Linear layers, in order (the fused kernel's arguments)."""
        return [p for m in self.net if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]

    def forward(self, x: torch.Tensor, grad_cols: int | None = None) -> torch.Tensor:
        """x (B, in_dim) → (B, out_dim or hidden[-1]). `grad_cols`: a promise that only
        x[:, :grad_cols] needs its gradient (raw features after the embeddings); the fused path
        then skips the rest of the first layer's input gradient, which it leaves zero."""
        if getattr(self, "fused", False) and self._can_fuse(x):  # absent in models saved before it existed
            return self._relu_mlp(x, self.linear_params(), self._last_linear, grad_cols)
        return self.net(x)

    def forward_with_head(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                          grad_cols: int | None = None) -> torch.Tensor:
        """x (B, in_dim) → (B,): a linear head `w` (out_dim or hidden[-1],), `b` (1,) over this
        MLP's output, run inside the fused kernel when it applies (under nn.precision's bf16 the
        head's gradient then reaches the last layer without a (B, H) tensor); `grad_cols` as in
        `forward`."""
        if getattr(self, "fused", False) and not self._last_linear and self._can_fuse(x):
            return self._relu_mlp(x, [*self.linear_params(), w.unsqueeze(0), b], True, grad_cols).squeeze(-1)
        return torch.mv(self.forward(x), w) + b
