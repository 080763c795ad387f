"""Multi-layer perceptron: h_{l+1} = Dropout(act(BN?(W_l h_l + b_l))); optional final linear.

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
                 batch_norm: bool = False, out_dim: int | None = None, activation: str = "relu") -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}[activation]
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(act())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_dim) → (B, out_dim or hidden[-1])."""
        return self.net(x)
