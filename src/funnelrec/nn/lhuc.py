"""Personalized gating.

`LHUCGate` (Learning Hidden Unit Contributions, Swietojanski et al. 2016; used as the
"PPNet"-style personal gate in industrial rankers): g = γ · σ(W2 ReLU(W1 p)) with γ = 2, so a
neutral gate is 1. A hidden layer becomes h' = h ⊙ g(p) for personal features p (user id …).
    p (B, Dp) → g (B, H).
`LHUCMLP`: an MLP whose every hidden layer is scaled by its own LHUC gate of p:
    h_{l+1} = ReLU(W_l h_l + b_l) ⊙ g_l(p).      x (B, Din), p (B, Dp) → (B, hidden[-1]).

    >>> import torch
    >>> LHUCMLP(6, 3, (8, 4))(torch.randn(2, 6), torch.randn(2, 3)).shape
    torch.Size([2, 4])
    >>> g = LHUCGate(3, 5); bool((g(torch.randn(4, 3)) < 2).all())
    True
"""

from __future__ import annotations

import torch
from torch import nn


class LHUCGate(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, scale: float = 2.0) -> None:
        super().__init__()
        self.scale = scale
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """p (B, Dp) → (B, out_dim) in (0, scale)."""
        return self.scale * torch.sigmoid(self.net(p))


class LHUCMLP(nn.Module):
    def __init__(self, in_dim: int, gate_dim: int, hidden: tuple[int, ...] = (256, 128),
                 dropout: float = 0.0, gate_hidden: int = 64) -> None:
        super().__init__()
        dims = (in_dim, *hidden)
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.gates = nn.ModuleList([LHUCGate(gate_dim, b, gate_hidden) for b in hidden])
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """x (B, Din), p (B, Dp) → (B, hidden[-1])."""
        for lin, gate in zip(self.layers, self.gates):
            x = self.dropout(torch.relu(lin(x)) * gate(p))
        return x
